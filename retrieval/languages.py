"""Which language a file is written in, and which syntax nodes are definitions worth a chunk of their own."""

from __future__ import annotations

from pathlib import PurePath

# Extension -> language name (tree-sitter-language-pack's names for code).
EXTENSIONS: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "tsx",
    ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".cs": "csharp", ".rb": "ruby", ".php": "php", ".swift": "swift", ".lua": "lua", ".r": "r",
    ".sh": "bash", ".bash": "bash", ".zsh": "bash", ".pl": "perl", ".pm": "perl", ".ex": "elixir",
    ".exs": "elixir", ".erl": "erlang", ".hs": "haskell", ".ml": "ocaml", ".jl": "julia", ".dart": "dart",
    ".zig": "zig", ".sql": "sql", ".proto": "proto", ".m": "objc", ".vue": "vue", ".svelte": "svelte",
    ".css": "css", ".scss": "scss", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json",
    ".xml": "xml", ".cmake": "cmake", ".tf": "hcl", ".nix": "nix", ".el": "elisp", ".clj": "clojure",
    ".md": "markdown", ".markdown": "markdown", ".mdx": "markdown",
    ".rst": "rst", ".txt": "text", ".text": "text", ".adoc": "text", ".org": "text", ".tex": "latex",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".pdf": "pdf", ".docx": "docx", ".ipynb": "ipynb",
}
FILENAMES: dict[str, str] = {
    "Makefile": "make", "GNUmakefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake",
    "README": "text", "LICENSE": "text", "COPYING": "text", "AUTHORS": "text", "CHANGES": "text",
    "NOTICE": "text", "Gemfile": "ruby", "Rakefile": "ruby", "Justfile": "make",
}
SHEBANGS = {"python": "python", "bash": "bash", "sh": "bash", "node": "javascript", "ruby": "ruby", "perl": "perl"}
PROSE = frozenset({"markdown", "rst", "text", "latex"})
DOCUMENTS = frozenset({"html", "pdf", "docx", "ipynb"})

# Binary formats recognised by name, so they are skipped without being read.
BINARY_EXTENSIONS = frozenset(
    [
        ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ico", ".webp", ".tif", ".tiff", ".psd", ".mp3", ".mp4",
        ".wav", ".flac", ".ogg", ".avi", ".mov", ".mkv", ".webm", ".zip", ".gz", ".tgz", ".bz2", ".xz",
        ".zst", ".7z", ".rar", ".tar", ".jar", ".war", ".whl", ".egg", ".so", ".dll", ".dylib", ".exe",
        ".bin", ".o", ".a", ".lib", ".pyc", ".pyo", ".class", ".wasm", ".db", ".sqlite", ".sqlite3",
        ".parquet", ".npy", ".npz", ".pt", ".pth", ".ckpt", ".safetensors", ".gguf", ".onnx", ".pkl",
        ".pickle", ".h5", ".hdf5", ".ttf", ".otf", ".woff", ".woff2", ".eot", ".xls", ".xlsx", ".ppt",
        ".pptx", ".doc", ".odt", ".iso", ".dmg", ".deb", ".rpm", ".faiss", ".index"
    ]
)
# Generated files that are large and say nothing a person would ask about.
GENERATED_NAMES = frozenset(
    [
        "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Cargo.lock", "uv.lock",
        "Pipfile.lock", "composer.lock", "go.sum", "Gemfile.lock"
    ]
)
MINIFIED_SUFFIXES = (".min.js", ".min.css", ".min.mjs", ".bundle.js", ".map")

# Syntax node types that start a definition, per tree-sitter grammar.
DEFINITIONS: dict[str, frozenset[str]] = {
    "python": frozenset({"function_definition", "class_definition"}),
    "javascript": frozenset({"function_declaration", "generator_function_declaration", "class_declaration",
                             "method_definition"}),
    "typescript": frozenset({"function_declaration", "generator_function_declaration", "class_declaration",
                             "abstract_class_declaration", "method_definition", "interface_declaration",
                             "type_alias_declaration", "enum_declaration", "module"}),
    "go": frozenset({"function_declaration", "method_declaration", "type_declaration"}),
    "rust": frozenset({"function_item", "impl_item", "struct_item", "enum_item", "trait_item", "mod_item",
                       "macro_definition"}),
    "java": frozenset({"class_declaration", "interface_declaration", "enum_declaration", "record_declaration",
                       "method_declaration", "constructor_declaration"}),
    "kotlin": frozenset({"class_declaration", "object_declaration", "function_declaration"}),
    "scala": frozenset({"class_definition", "object_definition", "trait_definition", "function_definition"}),
    "c": frozenset({"function_definition", "struct_specifier", "enum_specifier"}),
    "cpp": frozenset({"function_definition", "class_specifier", "struct_specifier", "namespace_definition"}),
    "csharp": frozenset({"class_declaration", "interface_declaration", "struct_declaration", "enum_declaration",
                         "record_declaration", "method_declaration", "constructor_declaration",
                         "namespace_declaration"}),
    "ruby": frozenset({"class", "module", "method", "singleton_method"}),
    "php": frozenset({"class_declaration", "interface_declaration", "trait_declaration", "function_definition",
                      "method_declaration"}),
    "swift": frozenset({"class_declaration", "protocol_declaration", "function_declaration"}),
    "lua": frozenset({"function_declaration"}),
    "bash": frozenset({"function_definition"}),
}
DEFINITIONS["tsx"] = DEFINITIONS["typescript"]
# Node types that wrap a definition (export, decorators, templates): the section spans the wrapper,
# the name and the nested definitions come from the definition inside.
WRAPPERS = frozenset({"export_statement", "decorated_definition", "template_declaration"})
# Struct/enum specifiers count only when they carry a body (not every `struct foo *p` use).
NEEDS_BODY = frozenset({"struct_specifier", "enum_specifier", "class_specifier"})


def detect(path: PurePath, head: bytes = b"") -> str | None:
    """Language of `path` from its name, else from a `#!` line in its first bytes; None when unknown."""
    if path.name in FILENAMES:
        return FILENAMES[path.name]
    language = EXTENSIONS.get(path.suffix.lower())
    if language is None and head.startswith(b"#!"):
        interpreter = head[2:].split(b"\n", 1)[0].decode("latin-1").split()
        if interpreter:
            program = interpreter[-1] if interpreter[0].endswith("env") else interpreter[0]
            program = program.rsplit("/", 1)[-1].rstrip("0123456789.")
            language = SHEBANGS.get(program)
    return language
