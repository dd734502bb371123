"""bench zoo with a private-latent family: the probe on s_m beside the probe on c, the style-transfer PNG."""
import numpy as np

from mdgm_ros.bench import zoo, zoo_private


def test_tiny_zoo_reports_the_probe_on_the_private_latents_and_a_style_transfer_png(tmp_path):
    config = zoo.ZooConfig(families=("mopoe", "mopoe_ms"), seeds=1, n_train=200, n_test=60, epochs=1,
                           classifier_epochs=1, iwae_k=3, n_nll=10, n_probe=200, batch_size=64)
    report = zoo.run_zoo(config)
    mopoe, private = report["summary"]["mopoe"], report["summary"]["mopoe_ms"]
    assert mopoe["latent_probe_private"] is None and 0.0 <= private["latent_probe_private"] <= 1.0
    run = next(r for r in report["runs"] if r["family"] == "mopoe_ms")
    grid = np.asarray(run["style_transfer"])
    assert grid.shape == (zoo_private.STYLE_ROWS, zoo_private.STYLE_COLUMNS, 3, 16, 16)
    assert np.abs(np.diff(grid.astype(float), axis=1)).max() > 0       # the columns' s_m change the image
    zoo.write_outputs(report, tmp_path)
    table = (tmp_path / "zoo.md").read_text()
    assert "probe on s_m" in table and f"{private['latent_probe_private']:.3f}" in table
    assert (tmp_path / "style_mopoe_ms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "style_mopoe.png").exists()
