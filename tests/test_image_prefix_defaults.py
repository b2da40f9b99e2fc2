"""The service and the Docker spawner agree on ``image_prefix`` when neither sets it,
and the homes that spawners labelled before the defaults agreed stay their hub's."""

from tljh_repo2docker import contract
from tljh_repo2docker.app import TljhRepo2Docker
from tljh_repo2docker.service.engine import Homes


def test_the_service_and_the_docker_spawner_have_one_default():
    from tljh_repo2docker import Repo2DockerSpawner

    service = TljhRepo2Docker()
    spawner = Repo2DockerSpawner(_mock=True)
    assert service.image_prefix == spawner.image_prefix == contract.DEFAULT_IMAGE_PREFIX
    # the service's names start with it, so the spawner offers what the service builds
    assert contract.belongs_to_hub(f"{service.image_prefix}env:main", {}, spawner.image_prefix)


def test_homes_labelled_with_the_old_empty_default_are_the_default_hubs():
    default = contract.DEFAULT_IMAGE_PREFIX
    assert contract.home_belongs_to_hub(default, default)
    assert contract.home_belongs_to_hub("", default)
    # another hub's, or an unlabelled prefix on a hub with its own prefix: not ours
    assert not contract.home_belongs_to_hub("school/", default)
    assert not contract.home_belongs_to_hub("", "school/")
    assert not contract.home_belongs_to_hub(default, "school/")
    assert not contract.home_belongs_to_hub(None, default)


def test_the_services_home_list_takes_the_old_labels():
    def volume(prefix):
        return {"Labels": {contract.HOME_LABEL: "1", f"{contract.HOME_LABEL}.prefix": prefix}}

    default_hub = Homes(parent=TljhRepo2Docker())
    other_hub = Homes(parent=TljhRepo2Docker(image_prefix="school/"))
    assert default_hub._is_ours(volume(""))
    assert default_hub._is_ours(volume(contract.DEFAULT_IMAGE_PREFIX))
    assert not default_hub._is_ours(volume("school/"))
    assert other_hub._is_ours(volume("school/"))
    assert not other_hub._is_ours(volume(""))

