"""The suite uses difflab's own thread policy (difflab.threads): one thread per core that other
processes leave free, so a busy core does not stall every test."""

import torch

from difflab.threads import free_cores

torch.set_num_threads(free_cores())
