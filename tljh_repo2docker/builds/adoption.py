"""Images on the engine that the database does not know (yet): which are ours.

Run at every start, after the builds are recovered:

1. Environments that say ``built`` but have no image id: those converted
   from tljh-repo2docker 3.x. Their image is found by its name (kept as 3.x
   named it) and labelled as ours (see ``Builder.adopt_image``), or the
   environment is marked failed when the image is gone.
2. Images of this service without a row (the database was lost): images with
   our uid label whose name starts with this service's ``image_prefix`` and
   whose ``image_prefix`` label, when they have one, is this service's.
3. Images of 3.x without a row: only with ``adopt_legacy_images``, as 3.x
   marked no image with the hub it belongs to.

An adopted image is the environment's first version (reason "adopted"), so
a built environment never has an empty history; a version recorded by the
upgrade to 4.x (under the environment's own name) gets its own reference
too, so that it survives the next rebuild (see ``keep_versions``).
Version references (``repo:tag--vN``) are never adopted as environments.

Ownership on a shared engine is the image prefix: each hub must have its own
(``TljhRepo2Docker.image_prefix``). Nothing here ever deletes an image.
"""

import json
import logging

from .. import contract
from ..db import store
from ..limits import LimitError, parse_cpu, parse_memory
from .base import BuildError

log = logging.getLogger(__name__)

LABEL = contract.LABEL_PREFIX
UID_LABEL = contract.UID_LABEL
PREFIX_LABEL = contract.IMAGE_PREFIX_LABEL
LEGACY_NAME_LABEL = contract.IMAGE_NAME_LABEL


def labels_for(env, image_prefix):
    """The labels an adopted image of ``env`` carries."""
    return contract.image_labels(env, image_prefix)


async def adopt_images(sessions, builder, image_prefix, adopt_legacy=False):
    """Match the engine's images with the database; returns the uids adopted."""
    envs = await store.list_environments(sessions)
    adopted = []
    for env in envs:
        if env.status == store.BUILT and env.image_id is None:
            if await _find_image(sessions, builder, env, image_prefix):
                adopted.append(env.uid)
    known_uids = {env.uid for env in envs}
    known_images = {env.image_name for env in envs}
    for image in await builder.adoptable_images():
        labels = image.get("labels") or {}
        name = image["image_name"]
        if name in known_images or contract.is_version_reference(name):
            continue
        uid = labels.get(UID_LABEL)
        if uid:
            if uid in known_uids or not _ours(name, labels, image_prefix):
                continue
        elif not (adopt_legacy and labels.get(LEGACY_NAME_LABEL)):
            continue
        env = await _environment_from_labels(sessions, image, image_prefix)
        if env is None:
            continue
        if uid is None:  # 3.x's: label it as ours
            if not await _find_image(sessions, builder, env, image_prefix):
                continue
        else:
            await store.update_environment(
                sessions, env.uid, status=store.BUILT, image_id=image.get("image_id"),
                size=image.get("size"), finished=store.now(),
            )
            await record_version(
                sessions, builder, env, image.get("image_id"), image.get("size")
            )
        known_uids.add(env.uid)
        known_images.add(name)
        adopted.append(env.uid)
        log.info("Adopted image %s as environment %s (%s)", name, env.uid, env.name)
    await _own_references(sessions, builder, envs)
    return adopted


async def record_version(sessions, builder, env, image_id, size):
    """Record ``env``'s adopted image as a version, unless one has that image."""
    if not image_id:
        return
    versions = await store.list_versions(sessions, env.uid)
    if any(v.image_id == image_id for v in versions):
        return
    number = max(env.build_number or 1, 1)
    try:
        reference = await builder.keep_version(env.image_name, image_id, number)
    except Exception as e:
        log.warning("Could not tag the adopted image of %s as a version: %s", env.uid, e)
        reference = env.image_name
    await store.add_version(
        sessions,
        env.uid,
        number=number,
        image_name=reference,
        image_id=image_id,
        commit=env.commit,
        built_at=env.finished or store.now(),
        size=size,
        built_by=env.owner,
        reason="adopted",
    )


async def _own_references(sessions, builder, envs):
    """Give current versions their own reference: those that share the
    environment's name (the upgrade to 4.x recorded them so), and those whose
    reference the service was stopped before making (see
    BuildManager._keep_version). The environment's name moves to the next build."""
    by_uid = {env.uid: env for env in envs if env.image_id is not None}
    try:
        references = await builder.image_references()
    except Exception as e:
        log.warning("Cannot list the images' names: %s", e)
        references = None
    for uid, version in await store.all_versions(sessions):
        env = by_uid.get(uid)
        if env is None or version.image_id != env.image_id:
            continue
        if version.image_name != env.image_name:
            if references is None or version.image_name in references:
                continue
            log.warning("Version %d of %s lost its tag: tagging it again", version.number, uid)
        try:
            reference = await builder.keep_version(env.image_name, version.image_id, version.number)
        except Exception as e:
            log.warning("Could not tag version %d of %s: %s", version.number, env.uid, e)
            continue
        if reference != version.image_name:
            await store.set_version_image(sessions, env.uid, version.id, reference)


def _ours(image_name, labels, image_prefix):
    if not image_name.startswith(image_prefix):
        return False
    return labels.get(PREFIX_LABEL) in (None, "", image_prefix)


async def _find_image(sessions, builder, env, image_prefix):
    """Give ``env`` its image on the engine; mark it failed if there is none."""
    try:
        found = await builder.adopt_image(env.image_name, labels_for(env, image_prefix))
    except BuildError as e:
        log.warning("Cannot adopt image %s of environment %s: %s", env.image_name, env.uid, e.message)
        return False
    if found is None:
        await store.update_environment(
            sessions,
            env.uid,
            status=store.FAILED,
            error=f"The image {env.image_name} is not on the Docker engine any more: rebuild it",
        )
        log.warning("Environment %s: its image %s is gone", env.uid, env.image_name)
        return False
    await store.update_environment(
        sessions, env.uid, image_id=found["image_id"], size=found.get("size"), error=None
    )
    await record_version(sessions, builder, env, found["image_id"], found.get("size"))
    log.info("Environment %s uses image %s (%s)", env.uid, env.image_name, found["image_id"])
    return True


async def _environment_from_labels(sessions, image, image_prefix):
    """A new environment row for an image without one (status built, no image id yet)."""
    labels = image.get("labels") or {}
    name = labels.get(f"{LABEL}.display_name") or image["image_name"]
    if await store.name_taken(sessions, name):
        log.warning("Not adopting image %s: the name %r is taken", image["image_name"], name)
        return None
    try:
        node_selector = json.loads(labels.get(f"{LABEL}.node_selector") or "{}")
    except ValueError:
        node_selector = {}
    if not isinstance(node_selector, dict):
        node_selector = {}
    try:
        memory = parse_memory(labels.get(f"{LABEL}.mem_limit") or None)
    except LimitError:
        memory = None
    try:
        cpu = parse_cpu(labels.get(f"{LABEL}.cpu_limit") or None)
    except LimitError:
        cpu = None

    env = await store.create_environment(
        sessions,
        uid=labels.get(UID_LABEL) or contract.new_uid(),
        name=name,
        image_name=image["image_name"],
        repo=labels.get("repo2docker.repo") or labels.get(f"{LABEL}.repo", ""),
        ref=labels.get("repo2docker.ref") or labels.get(f"{LABEL}.ref", ""),
        memory=memory,
        cpu=cpu,
        machine_profile=labels.get(f"{LABEL}.machine_profile") or None,
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        build_args={},
        owner=labels.get(f"{LABEL}.owner") or None,
    )
    await store.update_environment(sessions, env.uid, status=store.BUILT, finished=store.now())
    env.status = store.BUILT
    return env
