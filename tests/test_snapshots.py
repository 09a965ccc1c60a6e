"""A driver killed while Ray writes a snapshot: the last whole copy is kept, and put back before a resume."""

import json

from itra_tune.search import snapshots


def _write(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))


def test_the_keeper_copies_a_snapshot_read_whole_and_never_one_cut_short(tmp_path):
    state = tmp_path / "experiment_state-2026-12-07_10-00-00.json"
    train = tmp_path / "trial_1-workers" / "checkpoint_manager_snapshot.json"
    _write(state, {"trial_data": [1]})
    _write(train, {"current_report_index": 3})
    keeper = snapshots.Keeper()
    assert sorted(keeper.keep(tmp_path)) == sorted([state, train])
    assert keeper.keep(tmp_path) == []  # unchanged since the last look: not read again
    state.write_text('{"trial_data": [1, 2')  # the moment Ray is writing the next one
    assert keeper.keep(tmp_path) == []
    assert json.loads(snapshots.copy_of(state).read_text()) == {"trial_data": [1]}
    _write(state, {"trial_data": [1, 2]})
    assert keeper.keep(tmp_path) == [state]
    assert json.loads(snapshots.copy_of(state).read_text()) == {"trial_data": [1, 2]}
    # the copies match no pattern Ray looks for
    assert sorted(p.name for p in tmp_path.glob("experiment_state-*.json")) == [state.name]


def test_mend_puts_back_the_last_whole_copy_or_sets_a_snapshot_without_one_aside(tmp_path, capsys):
    state = tmp_path / "experiment_state-a.json"
    train = tmp_path / "trial_1-workers" / "checkpoint_manager_snapshot.json"
    fine = tmp_path / "experiment_state-0.json"
    for path in (state, train, fine):
        _write(path, {"v": 1})
    snapshots.Keeper().keep(tmp_path)
    _write(fine, {"v": 2})
    state.write_text("")  # killed right after the truncation
    train.write_text('{"current_')
    snapshots.copy_of(train).unlink()
    done = snapshots.mend(tmp_path)
    assert len(done) == 2
    assert json.loads(state.read_text()) == {"v": 1}
    assert json.loads(fine.read_text()) == {"v": 2}  # whole: left as it is, never rolled back
    assert not train.exists() and train.with_name(train.name + ".cut").read_text() == '{"current_'
    err = capsys.readouterr().err
    assert "experiment_state-a.json was cut short when the driver stopped: its previous version put back" in err
    assert "checkpoint_manager_snapshot.json was cut short" in err and "set aside" in err
    assert snapshots.mend(tmp_path) == []  # a second resume finds nothing to do
