"""Users' homes on Kubernetes: the PersistentVolumeClaims of ``kube_namespace``.

``Repo2DockerKubeSpawner`` makes each home a claim (``get_pvc_manifest`` in
spawners/kube.py) labelled ``tljh_repo2docker.home=1`` (and ``.user``,
``.server``, ``.environment``, label-safe), with the exact values, the hub's
``image_prefix`` among them (it holds ``/``, which no label value may), as
annotations of the same names. A claim is one of this hub's homes when it has
the label and its ``tljh_repo2docker.home.prefix`` annotation belongs to this
service's ``image_prefix`` (:func:`~tljh_repo2docker.contract.home_belongs_to_hub`):
other hubs' claims in the same namespace are never listed nor removed.

:class:`Claims` answers like :class:`~.engine.Homes` (``available``,
``list()``, ``delete(name)``, the same errors), so that the homes routes serve
either. A claim is in use while a pod of the namespace mounts it (any phase:
like a stopped container, a pod that has not been deleted still holds it).

``kubernetes_asyncio`` (the ``kubernetes`` extra) is imported on first use
only: the service imports and starts without it, and the homes routes then
say what is missing (501). Its configuration is read for each request: the
service account of the pod the service runs in, else ``$KUBECONFIG`` (or
``~/.kube/config``), so that rotated tokens are always current.
"""

import asyncio
import importlib
import json
import os
import re
from datetime import datetime, timezone

import aiohttp

from .. import contract
from ..errors import FieldError
from .engine import EngineError, HomeInUse, HomeNotFound

HOME_LABEL = contract.HOME_LABEL
USER_KEY = f"{HOME_LABEL}.user"
SERVER_KEY = f"{HOME_LABEL}.server"
ENVIRONMENT_KEY = f"{HOME_LABEL}.environment"
PREFIX_KEY = f"{HOME_LABEL}.prefix"

#: The setting that turns claims on (named in messages).
SETTING = "TljhRepo2Docker.kube_namespace"

# A claim's name is a DNS subdomain (RFC 1123): at most 253 characters.
_CLAIM_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")
_UNITS = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def valid_claim_name(name):
    return isinstance(name, str) and len(name) <= 253 and bool(_CLAIM_NAME.match(name))


def quantity_bytes(value):
    """A Kubernetes storage quantity (``10Gi``, ``500M``, ``1e9``) in bytes, or None."""
    match = _QUANTITY.match(str(value or "").strip())
    if not match or match.group(2) not in _UNITS:
        return None
    try:
        number = float(match.group(1)) * _UNITS[match.group(2)]
    except ValueError:
        return None
    return int(number) if number >= 0 else None


def _iso(value):
    """A claim's creation time (a datetime from the client, or RFC 3339) as ISO 8601 in UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat()


def _mounted_claims(pod):
    """The names of the claims ``pod`` (a V1Pod) mounts."""
    names = set()
    for volume in getattr(pod.spec, "volumes", None) or []:
        claim = getattr(volume, "persistent_volume_claim", None)
        if claim is not None and claim.claim_name:
            names.add(claim.claim_name)
    return names


class ClaimInUse(HomeInUse):
    """The claim is mounted by pods (409); ``containers`` names them."""

    def __init__(self, name, pods):
        self.containers = pods
        Exception.__init__(
            self,
            f"The home {name!r} is mounted by the pod(s) {', '.join(pods)}: stop the server first",
        )


class Claims:
    """This hub's home claims in ``namespace``, through the Kubernetes API.

    ``core`` is a CoreV1Api to use (tests); by default a client is made for
    each request from the in-cluster or kubeconfig configuration.
    """

    def __init__(self, namespace, image_prefix, *, log, timeout=10, core=None):
        self.namespace = namespace
        self.prefix = image_prefix
        self.log = log
        self.timeout = timeout
        self._core = core
        self._installed = None

    # -- the API ---------------------------------------------------------------

    @property
    def available(self):
        """Whether the Kubernetes client (the ``kubernetes`` extra) is installed."""
        if self._core is not None:
            return True
        if self._installed is None:
            try:
                importlib.import_module("kubernetes_asyncio")
            except ImportError:
                self._installed = False
            else:
                self._installed = True
        return self._installed

    @property
    def unavailable_reason(self):
        """Why the homes cannot be listed (one line naming the setting), or None."""
        if self.available:
            return None
        return (
            f"{SETTING} is set ({self.namespace}), but the Kubernetes client is not installed: "
            "install tljh-repo2docker with the 'kubernetes' extra "
            "(pip install 'tljh-repo2docker[kubernetes]') and restart the service"
        )

    @property
    def engine(self):
        return f"the Kubernetes API (namespace {self.namespace})"

    async def _connect(self):
        """A new ApiClient from the in-cluster configuration, else the kubeconfig."""
        from kubernetes_asyncio import client, config

        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            try:
                await config.load_kube_config(
                    config_file=os.environ.get("KUBECONFIG") or None,
                    client_configuration=configuration,
                    persist_config=False,
                )
            except (config.ConfigException, OSError, ValueError, TypeError) as e:
                raise EngineError(
                    f"{SETTING}: no Kubernetes configuration to reach {self.engine}: neither "
                    f"in a pod nor a usable kubeconfig ($KUBECONFIG) ({e.__class__.__name__})"
                ) from None
        return client.ApiClient(configuration)

    async def _call(self, method, *args, **kwargs):
        """Call the CoreV1Api method ``method`` (a name) with a bounded wait;
        trouble reaching the API becomes EngineError, the API's 4xx an
        ApiException (``status``)."""
        if self._core is not None:
            return await self._ask(getattr(self._core, method)(*args, **kwargs))
        from kubernetes_asyncio import client

        api_client = await self._ask(self._connect())
        try:
            return await self._ask(getattr(client.CoreV1Api(api_client), method)(*args, **kwargs))
        finally:
            await api_client.close()

    async def _ask(self, coro):
        try:
            return await asyncio.wait_for(coro, self.timeout)
        except asyncio.TimeoutError:
            raise EngineError(f"{self.engine} did not answer in {self.timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise EngineError(f"{self.engine} cannot be reached ({e.__class__.__name__})") from None
        except Exception as e:
            status = _status(e)
            if status in (401, 403):
                raise EngineError(
                    f"{self.engine} refused ({status}): the service's account may not list, read "
                    f"or delete persistentvolumeclaims or list pods there ({_api_message(e)})"
                ) from None
            if status is not None and status >= 500:
                raise EngineError(f"{self.engine} failed ({status}): {_api_message(e)}") from None
            raise  # the API's 404, 409 ... are the caller's business; anything else a bug

    # -- homes -----------------------------------------------------------------

    def _is_ours(self, claim):
        meta = claim.metadata
        labels = meta.labels or {}
        annotations = meta.annotations or {}
        return labels.get(HOME_LABEL) == "1" and contract.home_belongs_to_hub(
            annotations.get(PREFIX_KEY), self.prefix
        )

    async def _users(self, name=None):
        """``{claim name: [pod names]}`` of every pod of the namespace (any phase)."""
        pods = await self._call("list_namespaced_pod", self.namespace)
        users = {}
        for pod in pods.items or []:
            for claim in _mounted_claims(pod):
                if name is None or claim == name:
                    users.setdefault(claim, []).append(pod.metadata.name)
        return {k: sorted(v) for k, v in users.items()}

    def _entry(self, claim, users):
        meta = claim.metadata
        labels = meta.labels or {}
        annotations = meta.annotations or {}

        def exact(key):  # the annotation holds the exact value, the label a label-safe one
            value = annotations.get(key)
            return value if value is not None else labels.get(key, "")

        requests = getattr(getattr(claim.spec, "resources", None), "requests", None) or {}
        return {
            "name": meta.name,
            "user": exact(USER_KEY),
            "server": exact(SERVER_KEY),
            "environment": exact(ENVIRONMENT_KEY),
            "size": quantity_bytes(requests.get("storage")),
            "created": _iso(meta.creation_timestamp),
            "in_use_by": users.get(meta.name, []),
        }

    async def list(self):
        """``(homes, sizes_note)``: this hub's home claims, oldest first. A
        home's ``size`` is the storage its claim requests; claims being
        deleted are left out."""
        answer = await self._call(
            "list_namespaced_persistent_volume_claim",
            self.namespace,
            label_selector=f"{HOME_LABEL}=1",
        )
        claims = [
            c for c in answer.items or [] if self._is_ours(c) and not c.metadata.deletion_timestamp
        ]
        if not claims:
            return [], None
        users = await self._users()
        homes = [self._entry(claim, users) for claim in claims]
        homes.sort(key=lambda h: (h["created"] or "", h["name"]))
        note = None
        if any(h["size"] is None for h in homes):
            note = "Some claims request no storage size that can be read: their size is unknown"
        return homes, note

    def check_name(self, name):
        """FieldError (400) when ``name`` cannot be a claim's name."""
        if not valid_claim_name(name):
            raise FieldError(
                "name",
                f"{name[:100]!r} cannot be a claim's name: up to 253 lowercase letters, digits, "
                "'-' or '.', starting and ending with a letter or digit",
            )

    async def delete(self, name):
        """Delete the claim ``name``: HomeNotFound when it is not one of this
        hub's homes (or is being deleted), ClaimInUse while a pod mounts it."""
        self.check_name(name)
        try:
            claim = await self._call("read_namespaced_persistent_volume_claim", name, self.namespace)
        except Exception as e:
            if _status(e) is None:
                raise
            if _status(e) == 404:
                raise HomeNotFound(name) from None
            raise EngineError(f"{self.engine} refused: {_api_message(e)}") from None
        if not self._is_ours(claim) or claim.metadata.deletion_timestamp:
            raise HomeNotFound(name)
        pods = (await self._users(name)).get(name)
        if pods:
            raise ClaimInUse(name, pods)
        # Only the claim just read (its uid): never one made again under its name since.
        body = {"preconditions": {"uid": claim.metadata.uid}} if claim.metadata.uid else None
        try:
            await self._call(
                "delete_namespaced_persistent_volume_claim", name, self.namespace, body=body
            )
        except Exception as e:
            if _status(e) is None:
                raise
            if _status(e) in (404, 409):  # gone, or another claim by that name by now
                raise HomeNotFound(name) from None
            raise EngineError(f"{self.engine} refused: {_api_message(e)}") from None
        self.log.info("Removed the home claim %s/%s", self.namespace, name)


def _status(error):
    """The HTTP status of the API's answer (an ApiException), else None."""
    if isinstance(error, EngineError):
        return None
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def _api_message(error):
    """The API's own message of an ApiException (its JSON Status), else its reason."""
    body = getattr(error, "body", None)
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    try:
        message = json.loads(body).get("message") if body else None
    except (ValueError, AttributeError):
        message = None
    text = message or getattr(error, "reason", None) or error.__class__.__name__
    return str(text).splitlines()[0][:300]
