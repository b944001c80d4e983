"""Stand-ins for a transformers model in tests that need only the calls a predictor or an evaluator
makes: `to(device)`, `eval()`, `train(mode)` and the `training` flag. Subclasses add `__call__`."""


class StandInModel:
    training = True

    def to(self, device):
        return self

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self
