"""The work of the training stages: towers (pretrain, zip, finetune), the judge, the vocoder and
the ablation's cells."""
