"""A Lightning Trainer with the workbench's callback: a few steps of fit are traced with Lightning's hooks
mapped to regions (data loading, forward, backward, optimizer step), and the findings print when fit ends.

    python examples/lightning_fit.py          # needs the lightning extra: pip install -c constraints.txt -e '.[lightning]'
    python examples/lightning_fit.py --tiny

Writes profiles/example-lightning/rank0/<worker>.<ts>.pt.trace.json.gz.
"""
import argparse

import lightning.pytorch as pl
import torch
from torch import nn

from workbench.trace.lightning import WorkbenchCallback


class SmallCNN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(16, 10))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self.net(images), labels)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


parser = argparse.ArgumentParser()
parser.add_argument("--tiny", action="store_true")
parser.add_argument("--out", default="profiles/example-lightning")
args = parser.parse_args()
size = 16 if args.tiny else 32
data = torch.utils.data.TensorDataset(torch.randn(128, 3, size, size), torch.randint(0, 10, (128,)))
callback = WorkbenchCallback(args.out)
trainer = pl.Trainer(max_steps=8 if args.tiny else 40, callbacks=[callback], accelerator="auto", devices=1,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(SmallCNN(), torch.utils.data.DataLoader(data, batch_size=8))
print(f"findings: {[finding['rule'] for finding in callback.result['findings']]}")
