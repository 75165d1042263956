"""``sheepdog-backend agent --host NAME``: the compute-host agent of the local
export mode (sheepdog_export_mode = local; sheepdog_backend/agent).

Loads the backend like every command (``--config-file``, ``--backend``): its
gateways reach the cluster, its target options (target_prefix,
sheepdog_tgtadm_path, sheepdog_tgt_control_port, use_chap_auth,
sheepdog_export_chap_key) reach this host's tgtd; the portal defaults to
target_ip_address:target_port, the gateway to sheepdog_export_gateway and
its unix socket (which the LUs then go through) to
sheepdog_export_gateway_socket.
Runs until SIGTERM or SIGINT, logging what it does (INFO unless -v/--debug
say otherwise); its targets stay on tgtd when it stops.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from types import FrameType

from sheepdog_backend.cli.common import add_command
from sheepdog_backend.cli.output import Result
from sheepdog_backend.driver.base import VolumeDriver
from sheepdog_backend.exception import ConfigError, InvalidInput

LOG = logging.getLogger("sheepdog_backend.agent")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(subparsers, "agent", "run the compute-host agent of the local export "
                    "mode: register this host and keep its tgtd's targets equal to the "
                    "export records on the cluster", _run)
    p.add_argument("--host", required=True, metavar="NAME",
                   help="this compute host's name as Nova's connector carries it "
                   "(nova.conf [DEFAULT] host; default there: the hostname)")
    p.add_argument("--portal", metavar="IP:PORT", default=None,
                   help="the iSCSI portal initiators reach this host's tgtd at "
                   "(default: target_ip_address:target_port)")
    p.add_argument("--gateway", metavar="HOST:PORT", default=None,
                   help="this host's 'sheepdog-backend gateway' its LUs go through, "
                   "port <= 9999 (default: sheepdog_export_gateway)")
    p.add_argument("--gateway-socket", metavar="PATH", default=None,
                   help="that gateway's unix socket (its --unix): the LUs go through it "
                   "(unix:PATH:VDI), cheaper per request than TCP; the gateway is still "
                   "probed and registered by HOST:PORT (default: "
                   "sheepdog_export_gateway_socket; '' for TCP)")
    p.add_argument("--poll-interval", type=float, default=0.5, metavar="SECONDS",
                   help="how often the host's index is read (one direct read of one "
                   "attribute object; default 0.5)")
    p.add_argument("--check-interval", type=float, default=10.0, metavar="SECONDS",
                   help="how often every target on tgtd is compared with the records "
                   "(tgtd restarted, a target changed by hand; default 10)")


def _address(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InvalidInput(f"{what} {text!r} is not IP:PORT")
    return host, int(port)


def _run(driver: VolumeDriver, args: argparse.Namespace) -> Result:
    from sheepdog_backend.agent import AgentSettings, HostAgent
    from sheepdog_backend.driver.sheepdog import SheepdogDriver
    from sheepdog_backend.export import settings_for, targets_for

    if not isinstance(driver, SheepdogDriver):
        raise ConfigError(f"backend {driver.backend_name}: the agent needs the sheepdog "
                          f"driver, not {type(driver).__name__}")
    conf = driver.configuration
    gateway = args.gateway or str(conf.sheepdog_export_gateway or "")
    if not gateway:
        raise ConfigError("the agent needs this host's gateway: --gateway HOST:PORT or "
                          "sheepdog_export_gateway (start 'sheepdog-backend gateway' first)")
    gateway_socket = (args.gateway_socket if args.gateway_socket is not None
                      else str(getattr(conf, "sheepdog_export_gateway_socket", "") or ""))
    portal = _address(args.portal or f"{conf.target_ip_address}:{conf.target_port}",
                      "portal")
    settings = AgentSettings(host=args.host, portal=portal, gateway=gateway,
                             poll_interval=args.poll_interval,
                             check_interval=args.check_interval,
                             gateway_socket=gateway_socket)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = HostAgent(driver.client, targets_for(conf), settings_for(conf), settings)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        LOG.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    LOG.info("agent for host %s: portal %s:%d, gateway %s%s, polling every %g s",
             args.host, *portal, gateway,
             f" (LUs through unix:{gateway_socket})" if gateway_socket else "",
             args.poll_interval)
    agent.run(stop)
    return Result(message=f"agent for host {args.host} stopped")
