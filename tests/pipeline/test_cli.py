from pipeline.cli import main


def test_a_stage_without_its_inputs_fails_with_a_named_error(tmp_path, capsys):
    assert main(["train", "--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fourcast train: StoreSchemaError: no training store at" in err
    assert "store.zarr" in err


def test_check_config_prints_the_resolved_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FOURCAST_WORKDIR", str(tmp_path / "w"))
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert '"model": "afno-tiny"' in out and str(tmp_path / "w") in out


def test_ingest_run_without_source_files_fails_with_a_named_error(tmp_path, capsys):
    assert main(["ingest", "run", "--workdir", str(tmp_path)]) == 1
    assert "fourcast ingest run:" in capsys.readouterr().err
