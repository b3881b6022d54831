"""Training: the LightningModule, the losses (per task, L_cf and its targets), loss balancing (the one owner
of eq. 14's total), the checkpoint callbacks, stopping on a scheduler's signal (``preemption``), the run
folders (``runs``) and the checks before training (``preflight``). The entry point is
``python -m tiger.train``."""
