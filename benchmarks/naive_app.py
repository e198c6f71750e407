"""The naive way, for benchmarks/sweep_throughput.py: a Hydra + MLflow sweep written the
way most examples write it.

Hydra's basic sweeper and launcher, the fluent MLflow API with one log_metric call per
value, and a new pyplot figure per plot. It trains with fnnlab's own fit() on the same
data and logs the same things per run (params, six per-epoch metrics, two PNGs, the
config, the weights), so the benchmark compares the harness around training, not training.
"""

import tempfile
from pathlib import Path

import hydra
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fnnlab.data import load_iris2  # noqa: E402
from fnnlab.model import ScratchFNN  # noqa: E402
from fnnlab.train import fit  # noqa: E402

# Same as fnnlab's jobs: one intra-op thread, so training costs the same in both.
torch.set_num_threads(1)


@hydra.main(version_base="1.3", config_path="naive_conf", config_name="naive")
def main(cfg: DictConfig) -> None:
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run(run_name=f"h{cfg.model.hidden_dim}-lr{cfg.optim.lr}-s{cfg.seed}"):
        mlflow.log_params(
            {
                "model.hidden_dim": cfg.model.hidden_dim,
                "optim.lr": cfg.optim.lr,
                "train.epochs": cfg.train.epochs,
                "seed": cfg.seed,
            }
        )
        X, y = load_iris2()
        model = ScratchFNN(X.shape[1], cfg.model.hidden_dim, seed=cfg.seed)
        history = fit(model, X, y, lr=cfg.optim.lr, epochs=cfg.train.epochs)
        for name, values in history.metrics.items():
            for step, value in enumerate(values):
                mlflow.log_metric(name, value, step=step)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            plt.figure()
            plt.plot(history.metrics["loss"])
            plt.title("loss")
            plt.savefig(out / "loss.png")
            plt.close()
            plt.figure()
            for name in ("grad_norm/w1", "grad_norm/w2"):
                plt.plot(history.metrics[name], label=name)
            plt.yscale("log")
            plt.legend()
            plt.savefig(out / "grad_norm.png")
            plt.close()
            (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
            torch.save({"w1": history.w1, "w2": history.w2}, out / "weights.pt")
            mlflow.log_artifacts(str(out))


if __name__ == "__main__":
    main()
