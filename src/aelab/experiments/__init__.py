"""One short recipe per paper. name -> (module, description); each module has add_arguments(parser) and run(args)."""
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "train the MLP AE and the VAE on mnist5k, evaluate both, write one report"),
}
