"""The compute-host agent of the local export mode (issue 26, section 3).

``sheepdog-backend agent --host NAME`` (cli/agent.py) runs one ``HostAgent``
(agent.py) beside the host's own tgtd and gateway: it registers the host on
the cluster and keeps that tgtd's targets equal to what the export records
ask of the host (export/hosts.py describes what is kept on the cluster).
"""

from __future__ import annotations

from sheepdog_backend.agent.agent import AgentSettings, HostAgent

__all__ = ["AgentSettings", "HostAgent"]
