"""Removing pushed images from their registry (the Docker Registry HTTP API v2).

With ``DockerBuilder.push`` on, an environment's images live in a registry
too. Deleting the environment deletes their manifests there (``DELETE
/v2/<repository>/manifests/<digest>``), found by tag with a ``HEAD`` of the
manifest. A registry that does not allow deletes answers 405 (Docker's
registry without ``storage.delete.enabled``, most hosted ones): the tags
stay, and :meth:`RegistryMixin.delete_pushed` says which and why, so the
service can tell the admin. Deleting a manifest removes every tag that
points at it; its layers go at the registry's own garbage collection.

Loopback registries are reached over plain HTTP (as the Docker engine does
without configuration), others over HTTPS. Credentials
(``registry_username``, ``registry_password``) go as HTTP basic auth, or
for a token registry to its token service; never into a message.
"""

import ipaddress
import re

import aiohttp

from ...contract import split_reference
from .push import DEFAULT_REGISTRY, registry_of

#: The manifest types a registry may hold for a pushed tag.
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)
_BEARER_RE = re.compile(r'(\w+)="([^"]*)"')
TIMEOUT = aiohttp.ClientTimeout(total=30)


def registry_url(registry):
    """The base URL of ``registry`` (a host[:port] as in an image name)."""
    if registry == DEFAULT_REGISTRY:
        return "https://registry-1.docker.io"
    if registry.startswith("["):
        host = registry[1:registry.find("]")]  # [IPv6]:port
    else:
        host = registry.rsplit(":", 1)[0]
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    return f"{'http' if loopback else 'https'}://{registry}"


class RegistryMixin:
    """Deleting pushed images (part of ``DockerBuilder``): uses its
    ``registry_username``, ``registry_password``, ``registry_config_file`` and ``log``."""

    def _basic_auth(self, registry):
        username, password = self._registry_credentials(registry)
        if not (username or password):
            return None
        return aiohttp.BasicAuth(username or "", password or "")

    async def _registry_request(self, session, method, url, repository, headers, registry):
        """``method url``; on a token registry's 401, again with its token."""
        auth = self._basic_auth(registry)
        response = await session.request(method, url, headers=headers, auth=auth)
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status != 401 or not challenge.lower().startswith("bearer"):
            return response
        response.release()
        fields = dict(_BEARER_RE.findall(challenge))
        params = {"scope": f"repository:{repository}:pull,delete"}
        if fields.get("service"):
            params["service"] = fields["service"]
        async with session.get(fields.get("realm", ""), params=params, auth=auth) as answer:
            if answer.status != 200:
                return response
            token = (await answer.json(content_type=None) or {}).get("token") or ""
        return await session.request(
            method, url, headers={**headers, "Authorization": f"Bearer {token}"}
        )

    async def _ask(self, session, method, url, repository, registry):
        """``(response, None)`` (its body released), or ``(None, why)`` when
        the registry cannot be asked."""
        try:
            response = await self._registry_request(
                session, method, url, repository, {"Accept": MANIFEST_TYPES}, registry
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return None, f"{registry} cannot be reached ({e.__class__.__name__})"
        except ValueError as e:  # registry_config_file unreadable (names the file only)
            return None, str(e)
        response.release()
        return response, None

    async def delete_pushed(self, image_names):
        """Delete the manifests ``image_names`` point at from their registries.

        Returns ``(deleted, left)``: the names whose manifest went (or was
        gone already), and ``[(name, reason)]`` for those left, e.g. because
        the registry does not allow deletes. Never raises for a registry's
        answer.
        """
        deleted, left = [], []
        digests = {}  # (registry, repository, digest): [names]
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            for name in dict.fromkeys(image_names):
                registry = registry_of(name)
                repository, tag = split_reference(name)
                if repository.startswith(registry + "/"):
                    repository = repository[len(registry) + 1:]
                url = f"{registry_url(registry)}/v2/{repository}/manifests/{tag}"
                response, problem = await self._ask(session, "HEAD", url, repository, registry)
                if problem:
                    left.append((name, problem))
                    continue
                digest = response.headers.get("Docker-Content-Digest")
                if response.status == 404:
                    deleted.append(name)  # not there (any more)
                elif response.status != 200 or not digest:
                    left.append((name, f"{registry} answered {response.status} for the tag"))
                else:
                    digests.setdefault((registry, repository, digest), []).append(name)
            for (registry, repository, digest), names in digests.items():
                url = f"{registry_url(registry)}/v2/{repository}/manifests/{digest}"
                response, problem = await self._ask(session, "DELETE", url, repository, registry)
                if problem:
                    left += [(name, problem) for name in names]
                    continue
                if response.status in (200, 202, 404):
                    deleted += names
                    self.log.info("Deleted %s from %s", ", ".join(names), registry)
                elif response.status == 405:
                    reason = f"{registry} does not allow deleting images"
                    left += [(name, reason) for name in names]
                else:
                    reason = f"{registry} refused to delete it ({response.status})"
                    left += [(name, reason) for name in names]
        for name, reason in left:
            self.log.warning("Left %s in its registry: %s", name, reason)
        return deleted, left
