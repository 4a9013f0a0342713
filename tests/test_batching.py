"""One batch arithmetic (accumulation from global/micro batch, devices and nodes), make_trainer, one dev perplexity."""

import pytest

from lightning_nat.train.datamodule import NATDataModule, accumulation_steps, device_count
from lightning_nat.train.model import NATModule
from lightning_nat.train.trainer import make_trainer


@pytest.mark.parametrize("global_batch, micro, devices, nodes, expected",
                         [(64, 2, 1, 1, 32), (64, 2, 4, 1, 8), (64, 4, 4, 2, 2), (8, 8, 1, 1, 1)])
def test_accumulation_steps(global_batch, micro, devices, nodes, expected):
    assert accumulation_steps(global_batch, micro, devices, nodes) == expected
    assert expected * micro * devices * nodes == global_batch


@pytest.mark.parametrize("args", [(64, 3), (8, 2, 3), (4, 8), (0, 1), (8, 0), (8, 2, "2")])
def test_accumulation_steps_refuses_what_does_not_divide(args):
    with pytest.raises(ValueError, match="global_batch_size|micro_batch_size|devices"):
        accumulation_steps(*args)


def test_device_count_on_cpu():
    assert device_count("auto", "cpu") == 1 and device_count(-1, "cpu") == 1 and device_count([1, 3]) == 2


def test_make_trainer_takes_accumulation_from_the_data_module(tiny_dataset, scratch_model, tmp_path):
    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), micro_batch_size=2,
                       global_batch_size=8, max_length=4096)
    kw = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=str(tmp_path))
    trainer = make_trainer(dm, **kw)
    assert trainer.accumulate_grad_batches == 4 and trainer.world_size == 1
    with pytest.raises(ValueError, match="accumulate_grad_batches=2 contradicts"):
        make_trainer(dm, accumulate_grad_batches=2, **kw)
    # The one dev perplexity: validation's logged value and the every-N-steps pass agree, on one loader.
    module = NATModule(str(scratch_model))
    trainer.validate(module, dm, verbose=False)
    logged = float(trainer.callback_metrics["dev/perplexity"])
    assert dm.val_dataloader() is dm.val_dataloader()
    direct = module.dev_perplexity(dm.val_dataloader())
    assert direct["perplexity"] == pytest.approx(logged, rel=1e-5) and direct["target_tokens"] > 0


def test_lightning_sets_the_epoch_of_the_step_sampler(tiny_dataset, scratch_model):
    """Each epoch is reshuffled: Lightning reaches the sampler where it looks for set_epoch."""
    from lightning_nat.train.datamodule import NATDataModule
    from lightning_nat.train.model import NATModule
    from lightning_nat.train.trainer import make_trainer

    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), micro_batch_size=2,
                       global_batch_size=4, max_length=2048)
    trainer = make_trainer(dm, max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, limit_train_batches=2)
    trainer.fit(NATModule(str(scratch_model), learning_rate=1e-4), dm)
    assert trainer.train_dataloader.batch_sampler.epoch == 1
