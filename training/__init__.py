"""Training for fer_ros: the paper's two-stage fine-tuning of MobileNetV1 with center loss.

Run as modules from the repository root (data by path: --shared / $FER_SHARED / ../shared):

- `python -m training.train --out runs/s1 --epochs 60`        stage 1: ImageNet -> FER-2013
- `python -m training.experiments cv|cross ...`               stage 2: 5-fold CV on CK+ / JAFFE, cross-dataset
- `python -m training.experiments rescore ...`                score saved CV fold models with other test-time views
- `python -m training.tta_scan CKPT...`                       PublicTest accuracy with 1 / 2 / 6 / 12 views per face
- `python -m training.distill CKPT --out T.npy`               teacher logits for `training.train --distill T.npy`
- `python -m training.export CKPT OUT.onnx`                   ONNX export, checked against PyTorch
- `python -m training.ship CKPT --command ... --device ...`   replace the package's default model + card
- `python -m training.campaign --runs DIR`                    every run of docs/results.md, in parallel (GPU)
- `python -m training.results DIR`                            the markdown tables of docs/results.md
- `python -m training.bench_arch`                             CPU latency of width 1.0 vs 0.75
- `python -m training.devcarry`                               compact data copy for the GPU machine

Checkpoints (`*.pt`) are dicts {"config", "state_dict", "labels", ...}; `training.model.load_checkpoint(path)`
rebuilds the network (eval mode) - this is what `ExpressionClassifier(path, backend="torch")` uses.
"""
