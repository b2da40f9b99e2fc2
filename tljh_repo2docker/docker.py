"""The built environments on the local Docker engine, for code written for
tljh-repo2docker 3.x (``from tljh_repo2docker.docker import list_images``)."""

import aiodocker

from .spawners.mixin import UID_LABEL, environments_from_images


async def list_images(image_prefix=""):
    """The built environments on the local Docker engine (``$DOCKER_HOST`` or its
    socket), as dicts with ``image_name``, ``display_name``, ``mem_limit``,
    ``cpu_limit``, ``repo``, ``ref``, ``status``, ``uid``, ``node_selector`` and
    ``image_id``, sorted by display name; only those of the hub with
    ``image_prefix`` when it is given. A spawner's own
    ``await self.list_images()`` also applies its filter."""
    async with aiodocker.Docker() as client:
        images = await client.images.list(filters={"label": [UID_LABEL]})
    return [env.image_dict() for env in environments_from_images(images, image_prefix)]
