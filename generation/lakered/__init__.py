"""LAKE-RED (CVPR 2024) on stock diffusers parts: model, training, sampling, checkpoint conversion."""

from generation.lakered.model import BKRM, LMP, RCEM, LakeRed, LakeRedConfig
from generation.lakered.sample import LakeRedGenerator, build_lakered

__all__ = ["BKRM", "LMP", "RCEM", "LakeRed", "LakeRedConfig", "LakeRedGenerator", "build_lakered"]
