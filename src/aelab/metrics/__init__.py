"""Measuring, apart from modelling. Everything fitted here (PCA, probes, decoders) is fitted on the train
split given to it and scored on the test split given to it; the callers decide which split is which.

    reconstruction.py  per-image SSE, the PCA baseline, the least-squares linear decoder
    codes.py           encoding a data set, logistic-regression probes, t-SNE maps
    logistic.py        the probes' solver: multinomial logistic regression by Newton or L-BFGS in torch
    likelihood.py      the IWAE bound's batching over importance samples, active units
    contraction.py     Jacobian norms, saturation and singular values of an encoder (Rifai et al. 2011)
    retrieval.py       Hamming retrieval, PCA hashing, statistics of binary codes
    ranking.py         AUROC, average precision, precision@k (scikit-learn), graded per class
    intervals.py       mean, std and 95% interval over seeds (Student t or percentile bootstrap)
    curves.py          a seed group's mean loss curve and its band
"""
