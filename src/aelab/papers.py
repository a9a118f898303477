"""Every published number aelab prints beside its own, with the place it was read.

The rule: a number from a paper or another library appears in aelab's output only if it is in PAPERS below, and
each entry names where its digits were read (the paper and its table or figure, or a repository, commit and path).
A number that no readable source gave is not recalled: it is left out, and `missing` says so. `secondary` marks an
entry whose digits were read in a quotation of the paper (a thesis, a reproduction's README), not in the paper.

`numbers` keeps the digits exactly as printed (strings, so 3.00 stays 3.00); `Paper.value` gives the float.
Plain Python, no torch: a report can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Paper:
    key: str  # "hinton2006"
    citation: str  # authors, year, title, venue
    source: str  # where the numbers were read
    protocol: str  # data, splits, budget, evaluation: what the numbers measure
    unit: str  # what every number in `numbers` is
    numbers: Mapping[str, str] = field(default_factory=dict)  # row label -> the digits as printed
    std: Mapping[str, str] = field(default_factory=dict)  # row label -> its printed spread, where one is given
    secondary: bool = False  # read in a quotation of the paper, not in the paper itself
    missing: str = ""  # what could not be read, and so must not be printed

    def __post_init__(self):
        object.__setattr__(self, "numbers", MappingProxyType(dict(self.numbers)))
        object.__setattr__(self, "std", MappingProxyType(dict(self.std)))

    def value(self, label: str) -> float:
        return float(self.numbers[label])

    def values(self) -> dict[str, float]:
        return {label: float(text) for label, text in self.numbers.items()}

    def cite(self) -> str:
        """One line for a report: the citation and where its numbers were read."""
        return f"{self.citation}; read in {self.source}" + (" (a quotation of the paper)" if self.secondary else "")


_HINTON_CODE = "github.com/qiuwch/DeepLearning (commit 60508ff, a mirror of the authors' Matlab code)"
_IWAE_README = "github.com/nbip/IWAE, README.md (commit 0216b45), quoting arXiv 1509.00519 Table 1"

PAPERS: Mapping[str, Paper] = MappingProxyType(
    {
        p.key: p
        for p in (
            Paper(
                key="hinton2006",
                citation="Hinton & Salakhutdinov 2006, Reducing the dimensionality of data with neural networks, "
                "Science 313(5786):504-507",
                source="the Fig. 2B caption ('The average squared errors for the last three rows are 3.00, 8.01, and "
                "13.87'), read verbatim in a blog copy of the paper stored in a public GitHub file (search index "
                "file id 34521967913; the index does not name its repository)",
                protocol="MNIST, 60,000 training images, scored on the 10,000 test images; 784-1000-500-250-30 "
                "autoencoder, logistic units and a linear 30-D code; RBM pretraining (CD-1, batches of 100; the "
                "paper: 50 epochs per layer, its code: 10, 'works just fine'), then fine-tuning on the cross-"
                "entropy by conjugate gradients, 3 line searches per batch of 1,000, 200 epochs ('as in our "
                f"paper'); squared error summed over the 784 pixels, averaged over images ({_HINTON_CODE}: "
                "mnistdeepauto.m, backprop.m, rbm.m). How logistic PCA was fitted is in the supporting material, "
                "which was not read.",
                unit="average squared reconstruction error per test image (30-D codes)",
                numbers={"deep AE": "3.00", "logistic PCA": "8.01", "PCA": "13.87"},
                secondary=True,
                missing="the supporting online material (logistic PCA's fitting, the weight costs)",
            ),
            Paper(
                key="rifai2011",
                citation="Rifai, Vincent, Muller, Glorot & Bengio 2011, Contractive auto-encoders: explicit "
                "invariance during feature extraction, ICML",
                source="Table 1 (MNIST and CIFAR-bw), read as reproduced 'taken from [39]' in Figure 3.9 of Dang Ha "
                "The Hien's master's thesis 'Improving Deep Learning through Automatic Programming' (Halden, 2014), "
                "stored in a public GitHub file (search index file id 71359767886)",
                protocol="each unsupervised model (1000 sigmoid hidden units, one layer) initialises an MLP that is "
                "then fine-tuned with labels; test classification error after fine-tuning; the average Jacobian "
                "norm is taken before fine-tuning; SAT is the average fraction of saturated units per example. "
                "Splits and hyper-parameter search were not read.",
                unit="test error (%), mean ||J_f(x)||_F as printed (x 10^-4 for MNIST, x 10^-5 for CIFAR-bw), SAT",
                numbers={
                    "MNIST CAE": "1.14",
                    "MNIST DAE-g": "1.18",
                    "MNIST RBM-binary": "1.30",
                    "MNIST DAE-b": "1.57",
                    "MNIST AE+wd": "1.68",
                    "MNIST AE": "1.78",
                    "CIFAR-bw CAE": "47.86",
                    "CIFAR-bw DAE-b": "49.03",
                    "CIFAR-bw DAE-g": "54.81",
                    "CIFAR-bw AE+wd": "55.03",
                    "CIFAR-bw AE": "55.47",
                    "MNIST CAE jacobian": "0.73e-4",
                    "MNIST DAE-g jacobian": "0.86e-4",
                    "MNIST RBM-binary jacobian": "2.50e-4",
                    "MNIST DAE-b jacobian": "7.87e-4",
                    "MNIST AE+wd jacobian": "5.00e-4",
                    "MNIST AE jacobian": "17.5e-4",
                    "MNIST CAE SAT %": "86.36",
                    "MNIST DAE-g SAT %": "17.77",
                    "MNIST RBM-binary SAT %": "78.59",
                    "MNIST DAE-b SAT %": "68.19",
                    "MNIST AE+wd SAT %": "12.97",
                    "MNIST AE SAT %": "49.90",
                },
                secondary=True,
                missing="the paper's own text: data splits, epochs, the hyper-parameter grids, the fine-tuning MLP",
            ),
            Paper(
                key="nam2020",
                citation="Nam, Cha, Ahn, Lee & Shin 2020, Learning from Failure: training debiased classifier from "
                "biased classifier, NeurIPS (arXiv 2007.02561)",
                source="github.com/alinlab/LfF (commit e66796e): config.py, script/train.sh, "
                "data/colored_mnist_protocol.py, make_dataset.py, module/mlp.py, module/loss.py, util.py, train.py",
                protocol="Colored MNIST from the 60,000 training digits, aligned ratio 1 - skew (skewed1..4 = "
                "0.95/0.98/0.99/0.995); the evaluation set is the 10,000 MNIST test digits coloured at ratio 0.1 "
                "(colour-uniform); colour std 0.05/0.02/0.01/0.005/0.002 for severity 1..5 (train.sh: skewed3 "
                "severity4); MLP 3x100 ReLU; Adam lr 1e-3, batch 256, 235 x 100 steps; GCE q = 0.7; per-sample "
                "loss EMA alpha = 0.7; accuracy logged every 235 steps.",
                unit="unbiased test accuracy (%)",
                missing="Table 1 itself: no stored copy of the paper's table could be read, so vanilla, LfF, HEX, "
                "REPAIR, Group DRO and ReBias accuracies, their stds and the number of runs are all unread",
            ),
            Paper(
                key="liu2021",
                citation="Liu et al. 2021, Just Train Twice: improving group robustness without training group "
                "information (arXiv 2107.09044)",
                source="github.com/anniesch/jtt (commit 1de6cc5), README.md",
                protocol="the official code's datasets are Waterbirds (CUB), CelebA, MultiNLI and CivilComments "
                "(jigsaw); Colored MNIST is not among them.",
                unit="-",
                missing="any Colored MNIST number: none was found, and the official README lists no such dataset",
            ),
            Paper(
                key="burda2016",
                citation="Burda, Grosse & Salakhutdinov 2016, Importance weighted autoencoders, ICLR (arXiv "
                "1509.00519)",
                source=_IWAE_README,
                protocol="MNIST binarised afresh at every use, 59,600 training / 400 held out (github.com/yburda/"
                "iwae README.md, commit 78a6075); one stochastic layer 784-200-200-50 tanh (two layers: a second "
                "stochastic layer); Adam, batches of 20, lr 1e-3 * 10^(-i/7) for 3^i passes, i = 0..7 (3,280 "
                "passes; experiments.py); test NLL by the k = 5000 importance-weighted bound (experiments.py). "
                "The row's k is the k the model was TRAINED with.",
                unit="test NLL (nats), -log p(x) estimated with 5000 samples",
                numbers={
                    "VAE k=1": "86.76",
                    "VAE k=5": "86.47",
                    "VAE k=50": "86.35",
                    "IWAE k=1": "86.76",
                    "IWAE k=5": "85.54",
                    "IWAE k=50": "84.78",
                    "2 layers VAE k=1": "85.33",
                    "2 layers VAE k=5": "85.01",
                    "2 layers VAE k=50": "84.78",
                    "2 layers IWAE k=1": "85.33",
                    "2 layers IWAE k=5": "83.89",
                    "2 layers IWAE k=50": "82.90",
                },
                secondary=True,
                missing="the active-unit counts of Table 1; another stored version of the same README prints VAE "
                "k=5 once as 86.46 (86.47 in three other tables)",
            ),
            Paper(
                key="burda2016-static",
                citation="Burda, Grosse & Salakhutdinov 2016, Importance weighted autoencoders, ICLR, Appendix D",
                source="github.com/nbip/IWAE, README.md, an earlier stored version (search index file id "
                "6301003131): 'Static binarization ... should be compared to the results in appendix D'",
                protocol="Larochelle & Murray's fixed binarisation of MNIST (50,000 training digits), the same "
                "model and budget; about 3.5 nats of overfitting (github.com/yburda/iwae README.md).",
                unit="test NLL (nats), IWAE trained with k samples",
                numbers={"IWAE k=1": "88.71", "IWAE k=5": "87.63", "IWAE k=50": "87.10"},
                secondary=True,
            ),
            Paper(
                key="pythae",
                citation="Chadebec, Vincent & Allassonniere 2022, Pythae: unifying generative autoencoders in "
                "Python - a benchmarking use case, NeurIPS 35 (the library github.com/clementchadebec/benchmark_VAE)",
                source="github.com/clementchadebec/benchmark_VAE (commit 6419e21), "
                "examples/scripts/reproducibility/README.md, vae.py, iwae.py",
                protocol="Larochelle's statically binarised MNIST (binarized_mnist_{train,valid,test}.amat: "
                "50,000 / 10,000 / 10,000), one seed (123), final model. VAE: 784-400-40 ReLU, BCE, 500 epochs, "
                "batch 100, Adam lr 1e-4 with MultiStepLR; NLL with 200 importance samples. IWAE: 784-200-200-50 "
                "tanh, trained with 50 samples, 3,280 epochs, batch 20, Adam lr 1e-3 eps 1e-4, Burda's steps; NLL "
                "with 5000 samples. The '(0.01)' is the std over 5 NLL evaluations of the one trained model.",
                unit="test NLL (nats)",
                numbers={"VAE": "89.78", "IWAE (n_samples=50)": "86.82"},
                std={"VAE": "0.01", "IWAE (n_samples=50)": "0.01"},
                missing="its reference values are other papers' (VAE 89.9 from arXiv 1505.05770; IWAE 87.1 from "
                "arXiv 1509.00519, i.e. the static-binarisation k=50 figure), not Burda's Table 1",
            ),
            Paper(
                key="salakhutdinov2008",
                citation="Salakhutdinov & Murray 2008, On the quantitative analysis of deep belief networks, ICML",
                source="github.com/alexhunterlang/natural_bm, examples/long_demo.py (docstring: 'CD25(500) which "
                "achieved a test log likelihood of -86.34 on MNIST')",
                protocol="RBM with 500 hidden units trained by CD with T = 25; log Z by AIS with 100 runs and beta "
                "= [0:1/1000:0.5 0.5:1/10000:0.9 0.9:1/100000:1.0] (Salakhutdinov's demo script for CD25(500)); "
                "average log-probability of the MNIST test images.",
                unit="average test log-probability (nats)",
                numbers={"CD25(500) test": "-86.34"},
                secondary=True,
                missing="the paper's table: log Z estimates, train log-probabilities, and the CD1(25), CD1(500), "
                "CD3(500) rows",
            ),
        )
    }
)


def get(key: str) -> Paper:
    """The entry for `key`, or a KeyError naming the keys there are."""
    if key not in PAPERS:
        raise KeyError(f"no published numbers recorded for {key!r}; recorded: {', '.join(PAPERS)}")
    return PAPERS[key]
