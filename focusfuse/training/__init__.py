"""Training: defocus models, synthetic pairs and stacks with known truth, the loss, the training loop."""
