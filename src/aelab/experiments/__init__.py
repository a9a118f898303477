"""One short recipe per paper. name -> (module, description); each module has a Settings dataclass and run(settings).

Modules are imported only when their experiment runs: `aelab --help` and `aelab models` stay fast.
"""

EXPERIMENTS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "train the MLP AE and the VAE on mnist5k, evaluate both, write one report"),
    "debias": (
        "debias",
        "rank ColoredMNIST training images by how likely they are bias-conflicting, without colour labels",
    ),
    "debias-classifier": (
        "debias_classifier",
        "a ColoredMNIST digit classifier debiased without colour labels: vanilla, LfF, JTT, detect-reweight, "
        "bias-swap synthesis, oracles",
    ),
    "binary": ("binary", "binary (STE) vs float bottleneck vs PCA-sign codes: reconstruction and Hamming retrieval"),
    "hinton2006": (
        "hinton2006",
        "raw pixels vs PCA vs deep AE (random init) vs RBM-pretrained deep AE (Hinton & Salakhutdinov 2006)",
    ),
    "vae-family": (
        "vae_family",
        "VAE vs IWAE k=5 vs IWAE k=50 on dynamically binarised MNIST, test NLL (k=5000) beside Burda et al. 2016",
    ),
    "rbm-likelihood": (
        "rbm_likelihood",
        "RBMs on binarised MNIST (CD-1, CD-3, CD-25, PCD; a 25-unit one exact): log Z by AIS and log p(x), beside "
        "Salakhutdinov & Murray 2008",
    ),
    "contractive": (
        "contractive",
        "AE, AE+wd, DAE and CAE with one 784-1000 sigmoid layer (Rifai et al. 2011 Table 1)",
    ),
}
