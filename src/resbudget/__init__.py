"""resbudget: design, train and evaluate ResNets for CIFAR-10 under a parameter budget."""

__version__ = "0.1.0"
