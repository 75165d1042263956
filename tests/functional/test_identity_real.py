"""Cluster identity against real Sheepdog 1.0 nodes: the three nodes of one
cluster agree (same creation time in their epoch log), and a node of a second
cluster configured next to them is refused at set-up, before anything is sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from sheepdog_backend.driver.base import Volume
from sheepdog_backend.driver.loader import load_backend
from sheepdog_backend.exception import ForeignCluster
from tests.realsheep import SheepCluster


def ini(tmp_path: Path, gateways: list[str]) -> str:
    path = tmp_path / "real.conf"
    path.write_text("[DEFAULT]\nenabled_backends = r\n\n[r]\nsheepdog_gateways = "
                    f"{', '.join(gateways)}\nsheepdog_retry_attempts = 2\n"
                    "sheepdog_retry_deadline = 10\n")
    return str(path)


def test_real_nodes_of_one_cluster_agree_and_a_foreign_one_is_refused(
        real_sheep_cluster: SheepCluster, tmp_path: Path) -> None:
    driver = load_backend(ini(tmp_path, real_sheep_cluster.gateways))
    try:
        driver.do_setup()
        driver.check_for_setup_error()  # every node checked: same cluster
        driver.create_volume(Volume(id="one", size=1, name="one"))
        driver.delete_volume(Volume(id="one", size=1, name="one"))
    finally:
        driver.close()
    with SheepCluster(tmp_path / "other", nodes=1) as other:
        mixed = load_backend(ini(tmp_path, [*real_sheep_cluster.gateways, *other.gateways]))
        try:
            mixed.do_setup()
            with pytest.raises(ForeignCluster, match="another Sheepdog cluster"):
                mixed.check_for_setup_error()
        finally:
            mixed.close()
        listed = other.run_dog("vdi", "list", "-r").stdout
        assert listed.strip() == ""
