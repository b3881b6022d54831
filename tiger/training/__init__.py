"""Training: the LightningModule, the losses (per task, L_cf and its targets), loss balancing (the one owner
of eq. 14's total), the checkpoint callbacks and the run folders. The entry point is
``python -m tiger.train``."""
