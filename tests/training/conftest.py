"""Training tests share two CPU cores with everything else: one torch thread, small models, short runs."""

import torch

torch.set_num_threads(1)
