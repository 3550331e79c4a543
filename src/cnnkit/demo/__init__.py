"""``cnnkit demo``: what the library shows on a fresh machine."""

from cnnkit.demo.networks import TinyResNet, TinySegNet
from cnnkit.demo.run import run_demo

__all__ = ["TinyResNet", "TinySegNet", "run_demo"]
