# ruff: noqa: E501  (the documentation texts are premd's, verbatim)
"""The fixed list of Prem interfaces (``GET /v1/interfaces/``): premd v0.0.34's, in its order, texts verbatim."""

from __future__ import annotations

from gateway.schemas import Interface

_ICONS = "https://static.premai.io/daemon/interfaces"

_EMBEDDINGS = """
# Embeddings

## Description

Embeddings are all the services used to transform unstructured text in a vector representation. A vector representation is a vector of numbers that represents the most important features of the text. For example, a sentence can be represented as a vector of numbers. The vector is obtained using a neural network that is trained to extract the most important features of the sentence. Embeddings are used in many NLP tasks, such as text classification, text clustering, text similarity, and so on. In order to give memory to ChatGPT, we need to transform the text in a vector representation and store them in a vectorstore for later retrieval.

All the services compatible with Prem Embeddings interface expose an API that can be used directly with Langchain python library. You can find the library [here](https://python.langchain.com/en/latest/index.html).

## Getting Started

```python
import os

from langchain.embeddings import OpenAIEmbeddings

os.environ["OPENAI_API_KEY"] = "random-string"

# assuming the service is running on localhost
embeddings = OpenAIEmbeddings(openai_api_base="http://localhost:8000/api/v1")

text = "Prem is an easy to use open source AI platform."
query_result = embeddings.embed_query(text)
doc_result = embeddings.embed_documents([text])
```

"""

_VECTOR_STORE = """
# Vector Store

## Description

Vector Store are all the services that expose a vector database. A vector database is used to store embeddings. An embedding is a vector representation of a piece of data. For example, a sentence can be represented as a vector of numbers. The vector is obtained using a neural network that is trained to extract the most important features of the sentence.

## Installation & Usage

We don't have a standard interface for what concerns Vector Store services. However, we suggest to connect to the services using [Langchain](https://python.langchain.com/en/latest/index.html) python library or [Llama Index](https://gpt-index.readthedocs.io/en/latest/index.html).
"""

_CODER = """
# Coder

## Description

Coder are all the services that expose endpoints for code completion functionalities. As an example, you can think about GitHub Copilot as the main centralized alternative.

## Installation & Usage

We don't have a standard interface for what concerns Coder services. However, right now we mostly support services based on Tabby Docker images. In order to use Tabby services, you will need to install and use Tabby extension. You can find the extension [here](https://marketplace.visualstudio.com/items?itemName=TabbyML.vscode-tabby).
"""


def _heading(title: str) -> str:
    # premd's short texts are indented triple-quoted strings: the indentation is part of them.
    return f"\n        # {title}\n        "


INTERFACES: tuple[Interface, ...] = (
    Interface(id="chat", name="Chat", playground=True, documentation="\n# Chat\n        ", icon=f"{_ICONS}/chat.svg"),
    Interface(
        id="embeddings", name="Embeddings", playground=False, documentation=_EMBEDDINGS, icon=f"{_ICONS}/embeddings.svg"
    ),
    Interface(
        id="vector-store",
        name="Vector Store",
        playground=False,
        documentation=_VECTOR_STORE,
        icon=f"{_ICONS}/store.svg",
    ),
    Interface(id="coder", name="Coder", playground=False, documentation=_CODER, icon=f"{_ICONS}/coder.svg"),
    Interface(
        id="diffuser",
        name="Diffuser",
        playground=True,
        documentation=_heading("Prem Diffuser"),
        icon=f"{_ICONS}/diffuser.svg",
    ),
    Interface(
        id="upscaler",
        name="Upscaler",
        playground=True,
        documentation=_heading("Prem Upscaler"),
        icon=f"{_ICONS}/upscaler.svg",
    ),
    Interface(
        id="text-to-audio",
        name="Text to Audio",
        playground=True,
        documentation=_heading("Prem Text to Audio"),
        icon=f"{_ICONS}/tta.svg",
    ),
    Interface(
        id="audio-to-text",
        name="Audio to Text",
        playground=True,
        documentation=_heading("Prem Audio to Text"),
        icon=f"{_ICONS}/att.svg",
    ),
)
