"""Every spawner class we ship gets the service's settings from ``hub_config.configure()``
and from the TLJH plugin's ``tljh_config.configure()`` alike (issue 25)."""

import pytest
from traitlets.config import Config

from tljh_repo2docker import hub_config, tljh_config


def spawner_classes():
    from tljh_repo2docker import Repo2DockerSpawner

    classes = [Repo2DockerSpawner]
    try:
        from tljh_repo2docker import Repo2DockerKubeSpawner
    except ImportError:  # the 'kubernetes' extra is not installed
        return classes
    return classes + [Repo2DockerKubeSpawner]


def test_configure_reaches_every_spawner_class():
    from tljh_repo2docker.spawners.mixin import EnvironmentMixin

    c = Config()
    hub_config.configure(c, args=["--db_url=sqlite:////srv/r2d.sqlite", "--image_prefix=school/"])
    for spawner_class in spawner_classes():
        assert issubclass(spawner_class, EnvironmentMixin)
        section = c[spawner_class.__name__]
        merged = Config()
        for name in reversed([k.__name__ for k in spawner_class.mro()]):
            if name in c:
                merged.merge(c[name])
        assert merged.db_url == "sqlite:////srv/r2d.sqlite", spawner_class
        assert merged.image_prefix == "school/", spawner_class
        assert "db_url" not in section  # one place: the section they all derive from


def test_docker_spawner_through_configure():
    from tljh_repo2docker import Repo2DockerSpawner

    c = Config()
    hub_config.configure(c, args=["--db_url=sqlite:////srv/r2d.sqlite"])
    spawner = Repo2DockerSpawner(config=c, _mock=True)
    assert spawner.db_url == "sqlite:////srv/r2d.sqlite"


def test_an_explicit_value_is_kept():
    c = Config()
    c.EnvironmentMixin.db_url = "sqlite:////mine.sqlite"
    hub_config.configure(c, args=["--db_url=sqlite:////srv/r2d.sqlite"])
    assert c.EnvironmentMixin.db_url == "sqlite:////mine.sqlite"


def test_only_the_shared_settings():
    with pytest.raises(TypeError, match="not a setting the spawners share: port"):
        hub_config.configure_spawners(Config(), port=1)


def test_tljh_config_reaches_every_spawner_class(tmp_path):
    from tljh_repo2docker import Repo2DockerSpawner

    c = Config()
    tljh_config.configure(
        c, {"services": {"tljh_repo2docker": {"db_url": "sqlite:////x.sqlite", "image_prefix": "s/"}}}
    )
    assert (c.EnvironmentMixin.db_url, c.EnvironmentMixin.image_prefix) == ("sqlite:////x.sqlite", "s/")
    spawner = Repo2DockerSpawner(config=c, _mock=True)
    assert (spawner.db_url, spawner.image_prefix) == ("sqlite:////x.sqlite", "s/")
