"""The LangChain vector store and retriever against the standard suites of `langchain-tests`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import RetrieversIntegrationTests, VectorStoreIntegrationTests

from app.database import upgrade
from app.langchain_retrieval import RilletEmbeddings, RilletRetriever, RilletVectorStore
from memory.db import make_engine
from retrieval.embedder import SentenceEmbedder
from retrieval.service import Retrieval
from tests.retrieval.repo import GUIDE, helpers_module

SHARED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    folder = tmp_path_factory.mktemp("langchain")
    url = f"sqlite:///{folder / 'catalog.db'}"
    upgrade(url)
    return make_engine(url), folder / "indexes"


class TestRilletVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, catalog: tuple[Any, Path]) -> Iterator[VectorStore]:
        engine, index_dir = catalog
        store = RilletVectorStore.open(engine, index_dir, f"lc-{uuid.uuid4().hex[:8]}", self.get_embeddings())
        yield store
        store.retrieval.delete_collection(store.collection)


@pytest.fixture(scope="module", autouse=True)
def indexed_folder(catalog: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory,
                   embedder: SentenceEmbedder) -> None:
    """A small indexed folder for the retriever suite (its constructor params cannot take fixtures)."""
    engine, index_dir = catalog
    folder = tmp_path_factory.mktemp("docs")
    (folder / "guide.md").write_text(GUIDE)
    (folder / "helpers.py").write_text(helpers_module())
    retrieval = Retrieval(engine, index_dir, embedder)
    retrieval.create_collection("docs", [folder])
    retrieval.index("docs")
    SHARED["retrieval"] = retrieval


class TestRilletRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[RilletRetriever]:
        return RilletRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retrieval": SHARED["retrieval"], "collection": "docs"}

    @property
    def retriever_query_example(self) -> str:
        return "how do I install it"


def test_retriever_documents_carry_citations() -> None:
    retriever = RilletRetriever(retrieval=SHARED["retrieval"], collection="docs", k=2, path_glob="*.py")
    docs = retriever.invoke("convert a temperature to fahrenheit")
    assert docs and all(d.metadata["source"] == "helpers.py" for d in docs)
    top = docs[0]
    lines = SHARED["retrieval"].search("docs", "x", k=1, path_glob="*.py")[0].absolute_path.read_text().split("\n")
    assert top.page_content == "\n".join(lines[top.metadata["start_line"] - 1 : top.metadata["end_line"]])
    assert top.metadata["citation"] == f"helpers.py:{top.metadata['start_line']}-{top.metadata['end_line']}"


def test_vector_store_with_rillet_embeddings(catalog: tuple[Any, Path], embedder: SentenceEmbedder) -> None:
    engine, index_dir = catalog
    store = RilletVectorStore.open(engine, index_dir, "own-model", RilletEmbeddings(embedder))
    store.add_documents([Document(page_content="The cat sleeps on the warm windowsill.", metadata={"n": 1}),
                         Document(page_content="Quarterly revenue grew by four percent.", metadata={"n": 2})])
    assert store.similarity_search("a kitten napping", k=1)[0].metadata == {"n": 1}
    scored = store.similarity_search_with_relevance_scores("company earnings", k=2)
    assert scored[0][0].metadata == {"n": 2} and 0.0 <= scored[1][1] < scored[0][1] <= 1.0
    with pytest.raises(ValueError, match="indexes folders"):
        RilletVectorStore(SHARED["retrieval"], "docs").add_texts(["x"])
