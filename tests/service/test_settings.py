"""Settings: environment variables, embedded defaults, and the per-installation secret."""

import stat

from service.settings import Settings


def test_environment_variables_configure_the_service(monkeypatch, tmp_path):
    monkeypatch.setenv("POLLINID_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("POLLINID_MAX_IMAGES", "3")
    monkeypatch.setenv("POLLINID_DATABASE_URL", "postgresql+psycopg://u@h/db")
    s = Settings()
    assert s.max_images == 3
    assert s.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert s.media_path == tmp_path / "d" / "media"


def test_default_database_is_a_sqlite_file_in_the_data_folder(tmp_path):
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'pollinid.sqlite3').resolve()}"


def test_secret_is_created_once_private_and_shared_by_processes(tmp_path):
    first = Settings(data_dir=tmp_path)
    second = Settings(data_dir=tmp_path)
    assert first.secret_key == second.secret_key and len(first.secret_key) >= 40
    mode = (tmp_path / "secret_key").stat().st_mode
    assert stat.S_IMODE(mode) == 0o600
    assert first.secret_key not in repr(first)
    other = Settings(data_dir=tmp_path / "elsewhere")
    assert other.secret_key != first.secret_key
    assert Settings(data_dir=tmp_path, secret_key="given").secret_key == "given"
