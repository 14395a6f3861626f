"""Stand-ins for the two imports of k-diffusion's sampling.py that the tests do not need to install:
torchdiffeq (only its log-likelihood ODE, unused here) and a silent tqdm."""


def odeint(*args, **kwargs):
    raise NotImplementedError("torchdiffeq is not installed for the tests; sampling.log_likelihood is unused")


def trange(n, disable=None):
    return range(n)


class tqdm:
    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass
