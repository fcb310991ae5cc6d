"""STAMP (Song, Yoon, Yang, Hwang, 2020): set-based task-adaptive meta-pruning — a Set Transformer over a sample of a
new task and per-group mask generators prune a reference backbone for that task before it is trained on it."""
from transformers import TrainingArguments

from ..mapping import register_method
from .configuration import STAMPConfig
from .modeling import MaskGenerator, SetEncoder, STAMPModel, STAMPOutput, attach_head, fit_head, task_sample
from .trainer import EpisodeCollator, STAMPTrainer, TaskEpisodes

register_method("stamp", STAMPConfig, STAMPModel, STAMPTrainer, TrainingArguments)

__all__ = ["EpisodeCollator", "MaskGenerator", "STAMPConfig", "STAMPModel", "STAMPOutput", "STAMPTrainer", "SetEncoder",
           "TaskEpisodes", "attach_head", "fit_head", "task_sample"]
