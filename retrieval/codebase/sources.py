"""Which files of a tree are indexed, and their text: the walk (git's file list or ``.gitignore`` files, then
``.mretignore``, vendored and build folders, binary, huge, generated and undecodable files skipped with a counted
reason) and the readers (plain text and code as is; HTML as its text on the same line numbers; PDF through pypdf when
it is installed).

Inside a git work tree the file list is git's own (``git ls-files --cached --others --exclude-standard``): every
ignore source git honours applies (``.gitignore`` files, ``.git/info/exclude``, the user's ``core.excludesFile``),
exactly as git, ripgrep and colgrep see the tree. Elsewhere, or when git is not installed or fails, the tree is walked
and its ``.gitignore`` files read here. ``.mretignore`` files and the other filters apply on top either way.

The walk only stats files; reading happens later, one file at a time, so that a tree of any size streams through.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import subprocess
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pathspec

# folders nobody wants in a code search: version control, dependencies, caches, build output, our own index
EXCLUDED_DIRS = frozenset({
    ".git", ".hg", ".svn", ".mret", "node_modules", "bower_components", "vendor", "third_party", "__pycache__",
    ".venv", "venv", ".tox", ".nox", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".cache", "build", "dist",
    "target", ".eggs", "site-packages", ".idea", ".vscode", ".gradle", ".next", ".terraform", "htmlcov"})
# content that is not prose or code even when it decodes: archives, media, compiled and serialized data
BINARY_SUFFIXES = frozenset(
    ".png .jpg .jpeg .gif .bmp .ico .webp .tif .tiff .psd .mp3 .mp4 .wav .ogg .flac .avi .mov .mkv .webm .zip .gz "
    ".tgz .bz2 .xz .zst .7z .rar .tar .jar .war .whl .egg .so .dylib .dll .exe .o .a .lib .obj .pyc .pyo .class .wasm "
    ".ttf .otf .woff .woff2 .eot .npy .npz .pt .pth .ckpt .safetensors .bin .onnx .pkl .pickle .parquet .arrow .h5 "
    ".hdf5 .db .sqlite .sqlite3 .mo .dat .iso .dmg .deb .rpm .doc .docx .xls .xlsx .ppt .pptx".split())
GENERATED_NAMES = frozenset({"package-lock.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock", "Cargo.lock",
                             "uv.lock", "Pipfile.lock", "composer.lock", "go.sum", "Gemfile.lock"})
GENERATED_SUFFIXES = (".min.js", ".min.css", ".map", ".lock")
LANGUAGES = {
    ".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".jsx": "javascript", ".ts": "typescript", ".tsx": "typescript", ".java": "java", ".kt": "kotlin", ".scala": "scala",
    ".go": "go", ".rs": "rust", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp",
    ".cs": "csharp", ".rb": "ruby", ".php": "php", ".swift": "swift", ".m": "objc", ".lua": "lua", ".r": "r",
    ".jl": "julia", ".sh": "shell", ".bash": "shell", ".zsh": "shell", ".sql": "sql", ".pl": "perl", ".hs": "haskell",
    ".ex": "elixir", ".exs": "elixir", ".erl": "erlang", ".clj": "clojure", ".dart": "dart", ".vue": "vue",
    ".md": "markdown", ".markdown": "markdown", ".rst": "rst", ".txt": "text", ".tex": "tex", ".html": "html",
    ".htm": "html", ".xhtml": "html", ".pdf": "pdf", ".json": "json", ".yaml": "yaml", ".yml": "yaml",
    ".toml": "toml", ".ini": "ini", ".cfg": "ini", ".xml": "xml", ".css": "css", ".scss": "css", ".proto": "proto"}
PROSE = frozenset({"markdown", "rst", "text", "tex", "html", "pdf"})
# `--type` names: ripgrep's own definitions (`rg --type-list`; crates/ignore/src/default_types.rs) for the languages
# above, matched case-sensitively against the file name as ripgrep does (its cpp type lists *.C and *.H but not
# *.c). Each language's name and its ripgrep name (py, js, txt, ...) select the same globs, plus any suffix LANGUAGES
# gives it (.pyi). `language_of`'s "text" fallback for extensionless files is deliberately not a type: ripgrep's txt
# is *.txt, and a Makefile or LICENSE is not a text file.
_RG_TYPES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("python", "py"): ("*.py",),
    ("javascript", "js"): ("*.js", "*.jsx", "*.vue", "*.cjs", "*.mjs"),
    ("typescript", "ts"): ("*.ts", "*.tsx", "*.cts", "*.mts"),
    ("java",): ("*.java", "*.jsp", "*.jspx", "*.properties"),
    ("kotlin",): ("*.kt", "*.kts"),
    ("scala",): ("*.scala", "*.sbt"),
    ("go",): ("*.go",),
    ("rust",): ("*.rs",),
    ("c",): ("*.[chH]", "*.[chH].in", "*.cats"),
    ("cpp",): ("*.[ChH]", "*.cc", "*.[ch]pp", "*.[ch]xx", "*.hh", "*.inl", "*.[ChH].in", "*.cc.in", "*.[ch]pp.in",
               "*.[ch]xx.in", "*.hh.in"),
    ("csharp", "cs"): ("*.cs",),
    ("ruby",): ("config.ru", "Gemfile", ".irbrc", "Rakefile", "*.gemspec", "*.rb", "*.rbw"),
    ("php",): ("*.php", "*.php3", "*.php4", "*.php5", "*.php7", "*.php8", "*.pht", "*.phtml"),
    ("swift",): ("*.swift",),
    ("objc",): ("*.h", "*.m"),
    ("lua",): ("*.lua",),
    ("r",): ("*.R", "*.r", "*.Rmd", "*.Rnw"),
    ("julia", "jl"): ("*.jl",),
    ("shell", "sh"): (".login", ".logout", ".profile", "profile", ".bash_login", "bash_login", ".bash_logout",
                      "bash_logout", ".bash_profile", "bash_profile", ".bashrc", "bashrc", "*.bashrc", ".cshrc",
                      "*.cshrc", ".kshrc", "*.kshrc", ".tcshrc", ".zshenv", "zshenv", ".zlogin", "zlogin", ".zlogout",
                      "zlogout", ".zprofile", "zprofile", ".zshrc", "zshrc", "*.bash", "*.csh", "*.ksh", "*.sh",
                      "*.tcsh", "*.zsh"),
    ("sql",): ("*.sql", "*.psql"),
    ("perl",): ("*.perl", "*.pl", "*.PL", "*.plh", "*.plx", "*.pm", "*.t"),
    ("haskell",): ("*.hs", "*.lhs", "*.cpphs", "*.c2hs", "*.hsc"),
    ("elixir",): ("*.ex", "*.eex", "*.exs"),
    ("erlang",): ("*.erl", "*.hrl"),
    ("clojure",): ("*.clj", "*.cljc", "*.cljs", "*.cljx"),
    ("dart",): ("*.dart",),
    ("markdown", "md"): ("*.markdown", "*.md", "*.mdown", "*.mdwn", "*.mkd", "*.mkdn"),
    ("rst",): ("*.rst",),
    ("text", "txt"): ("*.txt",),
    ("tex",): ("*.tex", "*.ltx", "*.cls", "*.sty", "*.bib", "*.dtx", "*.ins"),
    ("html",): ("*.htm", "*.html", "*.ejs"),
    ("pdf",): ("*.pdf",),
    ("json",): ("*.json", "composer.lock"),
    ("yaml",): ("*.yaml", "*.yml"),
    ("toml",): ("*.toml", "Cargo.lock"),
    ("ini", "config"): ("*.cfg", "*.conf", "*.config", "*.ini"),
    ("xml",): ("*.xml", "*.xml.dist", "*.dtd", "*.xsl", "*.xslt", "*.xsd", "*.xjb", "*.rng", "*.sch", "*.xhtml"),
    ("css",): ("*.css", "*.scss"),
    ("proto", "protobuf"): ("*.proto",),
}


def _types() -> dict[str, frozenset[str]]:
    types = {"vue": frozenset({"*.vue"})}  # ours alone: ripgrep counts .vue as js
    for names, globs in _RG_TYPES.items():
        own = {f"*{suffix}" for suffix, language in LANGUAGES.items() if language == names[0]}
        types.update(dict.fromkeys(names, frozenset(globs) | own))
    return types


TYPES = _types()  # type name -> file-name globs
IGNORED = "ignored (.gitignore/.mretignore)"
EXCLUDED = "excluded folder (vendored, build, cache)"
NOT_UTF8_NAME = "file name not UTF-8"
# variables that point git at another repository than the one around the root (git sets them for its hooks, where
# ``mret index`` may run): git is asked about the root's own repository
GIT_REPOSITORY_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
                      "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_PREFIX", "GIT_IMPLICIT_WORK_TREE")
SNIFF_BYTES = 8192
DEFAULT_MAX_FILE_BYTES = 1 << 20  # 1 MiB: larger "source" files are almost always data or generated


@dataclass(frozen=True)
class SourceFile:
    """A file the walk found: ``path`` relative to the root, with '/' separators (the id used everywhere)."""

    path: str
    absolute: Path
    size: int
    mtime_ns: int

    @property
    def language(self) -> str:
        return language_of(self.path)


@dataclass
class Walk:
    files: list[SourceFile] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> files (or folders, for excluded folders)
    lister: str = "walk"  # where the file list came from: "git" (git ls-files), "walk" (os.walk), "list" (given)


def language_of(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return LANGUAGES.get(suffix, suffix.lstrip(".") or "text")


def is_code(path: str) -> bool:
    return language_of(path) not in PROSE


def matches_type(path: str, types: Iterable[str]) -> bool:
    """Whether ``path`` is of one of ``types`` (lower case, no dot), as `--type` selects: a type name of TYPES by
    its globs on the file name (ripgrep's semantics), anything else as an extension ("vue", "lock")."""
    name = path.rsplit("/", 1)[-1]
    extension = os.path.splitext(name)[1].lstrip(".").lower()
    return any(any(fnmatch.fnmatchcase(name, glob) for glob in TYPES[t]) if t in TYPES else t == extension
               for t in types)


class _IgnoreRules:
    """``.gitignore`` and ``.mretignore`` files (``names``), each applying below its own folder; as in git, the
    deepest file with a matching pattern decides, and within a file the last matching pattern (``!`` re-includes)."""

    def __init__(self, names: tuple[str, ...] = (".gitignore", ".mretignore")) -> None:
        self._specs: dict[str, list[pathspec.PathSpec]] = {}
        self._names = names

    def load(self, folder: Path, relative: str) -> None:
        specs = []
        for name in self._names:
            try:
                lines = (folder / name).read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            specs.append(_ignore_spec(lines))
        if specs:
            self._specs[relative] = specs

    def ignored(self, relative: str, is_dir: bool) -> bool:
        parts = relative.split("/")
        for depth in range(len(parts) - 1, -1, -1):  # the deepest folder first
            base = "/".join(parts[:depth])
            for spec in reversed(self._specs.get(base, ())):  # .mretignore over .gitignore
                sub = "/".join(parts[depth:]) + ("/" if is_dir else "")
                result = spec.check_file(sub)
                if result.include is not None:
                    return bool(result.include)
        return False


def _ignore_spec(lines: list[str]) -> pathspec.PathSpec:
    """The patterns of an ignore file; a line that is not a valid pattern ("!" alone, a trailing backslash) is
    skipped, as git skips it, rather than stopping the walk."""
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except ValueError:
        valid = []
        for line in lines:
            try:
                pathspec.GitIgnoreSpec.from_lines([line])
            except ValueError:
                continue
            valid.append(line)
        return pathspec.GitIgnoreSpec.from_lines(valid)


def walk(root: Path, exclude: Iterable[Path] = ()) -> Walk:
    """Every indexable-looking file under ``root`` in a fixed order (the walk's: a folder's files sorted by name, then
    its subfolders), without reading file contents. Inside a git work tree git lists the files (``git_paths``);
    elsewhere the tree is walked. ``exclude``: folders passed silently (the index folder). Binary suffixes, generated
    files, size limits and encodings are judged later by ``read_source``."""
    root = root.resolve()
    excluded = {Path(p).resolve() for p in exclude}
    listing = git_paths(root)
    return _tree_walk(root, excluded) if listing is None else _git_walk(root, listing, excluded)


def _tree_walk(root: Path, excluded: set[Path]) -> Walk:
    """The tree walked, ``.gitignore`` and ``.mretignore`` files read here, ignored and excluded folders pruned."""
    rules, out = _IgnoreRules(), Walk()
    for folder, dirnames, filenames in os.walk(root):
        here = Path(folder)
        relative = here.relative_to(root).as_posix()
        relative = "" if relative == "." else relative
        rules.load(here, relative)
        keep = []
        for name in sorted(dirnames):
            path = f"{relative}/{name}" if relative else name
            if name == ".mret" or (here / name).resolve() in excluded:
                continue  # our own index folders: not the user's content, not worth a line in the summary
            if name in EXCLUDED_DIRS or name.endswith(".egg-info"):
                out.skipped[EXCLUDED] += 1
            elif (here / name).is_symlink():
                out.skipped["symlink"] += 1
            elif rules.ignored(path, is_dir=True):
                out.skipped[IGNORED] += 1
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = f"{relative}/{name}" if relative else name
            absolute = here / name
            if name in (".gitignore", ".mretignore"):
                continue
            if absolute.is_symlink():
                out.skipped["symlink"] += 1
            elif rules.ignored(path, is_dir=False):
                out.skipped[IGNORED] += 1
            elif not _utf8(path):
                out.skipped[NOT_UTF8_NAME] += 1
            else:
                found = stat_file(root, absolute)
                if isinstance(found, str):
                    out.skipped[found] += 1
                else:
                    out.files.append(found)
    return out


def git_paths(folder: Path) -> list[str] | None:
    """The files git shows under ``folder`` (tracked, and untracked but not ignored), relative to it; None when
    ``folder`` is not in a git work tree, git is not installed or fails, or git ignores ``folder`` itself (a build
    folder the user asked for by name: it is walked as a tree of its own). One ``git ls-files`` call for the whole
    tree; a nested repository (a submodule, a clone inside the tree) is listed as one folder, ending in '/' when
    untracked; tracked files deleted from the work tree are still listed."""
    listing = _git(folder, "ls-files", "--cached", "--others", "--exclude-standard", "-z")
    if listing is None:
        return None
    # unmerged files come once per stage; names are bytes (-z: never quoted), decoded as the file system does
    paths = list(dict.fromkeys(os.fsdecode(name).rstrip("/") for name in listing.split(b"\0") if name))
    if not paths and _git(folder, "check-ignore", "-q", ".") is not None:
        return None
    return paths


def _git(folder: Path, *args: str) -> bytes | None:
    """git's output, run in ``folder``; None when git is not installed or exits with an error."""
    env = {key: value for key, value in os.environ.items() if key not in GIT_REPOSITORY_ENV}
    try:
        done = subprocess.run(["git", *args], cwd=folder, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              check=False)
    except OSError:  # no git on PATH (or not runnable)
        return None
    return done.stdout if done.returncode == 0 else None


def _git_walk(root: Path, listing: list[str], excluded: set[Path]) -> Walk:
    """The files git listed, through the filters the tree walk applies itself (git has applied every ignore file
    but ``.mretignore``): our index folders, vendored and build folders, ``.mretignore``, symlinks, non-files.
    Folder verdicts are cached, so each folder is judged (and counted) once, as the tree walk prunes it once."""
    rules, out = _IgnoreRules(names=(".mretignore",)), Walk(lister="git")
    silent = {p.relative_to(root).as_posix() for p in excluded if p != root and p.is_relative_to(root)}
    rules.load(root, "")
    taken: dict[str, bool] = {"": True}  # folder -> whether the files below it are taken

    def folder_taken(folder: str) -> bool:
        if folder not in taken:
            parent, _, name = folder.rpartition("/")
            ok = folder_taken(parent)
            if ok and (name == ".mret" or folder in silent):
                ok = False
            elif ok and (name in EXCLUDED_DIRS or name.endswith(".egg-info")):
                ok, out.skipped[EXCLUDED] = False, out.skipped[EXCLUDED] + 1
            elif ok and rules.ignored(folder, is_dir=True):
                ok, out.skipped[IGNORED] = False, out.skipped[IGNORED] + 1
            elif ok:
                rules.load(root / folder, folder)  # a .mretignore that git itself ignores still counts
            taken[folder] = ok
        return taken[folder]

    pending = list(reversed(listing))
    while pending:
        path = pending.pop()
        folder, _, name = path.rpartition("/")
        if not folder_taken(folder) or name in (".gitignore", ".mretignore"):
            continue
        if rules.ignored(path, is_dir=False):
            out.skipped[IGNORED] += 1
            continue
        absolute = root / path
        try:
            info = absolute.lstat()
        except FileNotFoundError:
            continue  # deleted from the work tree, still in git's index: not in the tree
        except OSError:
            out.skipped["missing or unreadable"] += 1
            continue
        if stat.S_ISLNK(info.st_mode):
            out.skipped["symlink"] += 1
        elif stat.S_ISDIR(info.st_mode):  # a nested repository (or a submodule that is not checked out: empty)
            nested = git_paths(absolute) if os.path.lexists(absolute / ".git") else []
            if nested is None:
                out.skipped["nested repository that git cannot list"] += 1
            else:
                pending += [f"{path}/{p}" for p in reversed(nested)]
        elif not stat.S_ISREG(info.st_mode):
            out.skipped["not a regular file"] += 1
        elif not _utf8(path):
            out.skipped[NOT_UTF8_NAME] += 1
        else:
            out.files.append(SourceFile(path, absolute, info.st_size, info.st_mtime_ns))
    out.files.sort(key=lambda f: walk_order(f.path))
    return out


def walk_order(path: str) -> tuple[tuple[int, str], ...]:
    """The tree walk's order as a sort key: in each folder its files (by name) before its subfolders (by name)."""
    *folders, name = path.split("/")
    return (*((1, folder) for folder in folders), (0, name))


def _utf8(path: str) -> bool:
    """Whether a name read from the file system is UTF-8 (the store keeps paths as UTF-8 text; an undecodable byte
    comes back from ``os.fsdecode`` as a lone surrogate, which SQLite cannot store)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def listed(root: Path, paths: Iterable[str]) -> Walk:
    """The files named in a list (``--files-from``), relative to ``root`` or absolute under it, in list order."""
    root, out, seen = root.resolve(), Walk(lister="list"), set()
    for line in paths:
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        try:
            absolute = (root / name).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL in the name
            out.skipped["not a valid path"] += 1
            continue
        if not absolute.is_relative_to(root):
            out.skipped["outside the indexed root"] += 1
            continue
        found = stat_file(root, absolute)
        if isinstance(found, str):
            out.skipped[found] += 1
        elif found.path not in seen:
            seen.add(found.path)
            out.files.append(found)
    return out


def stat_file(root: Path, absolute: Path) -> SourceFile | str:
    """The file, or why it is not taken (a reason that can be decided without reading it)."""
    try:
        info = absolute.stat()
    except OSError:
        return "missing or unreadable"
    if not absolute.is_file():
        return "not a regular file"
    return SourceFile(absolute.relative_to(root).as_posix(), absolute, info.st_size, info.st_mtime_ns)


class SkippedFile(Exception):
    """A file that is not indexed; ``reason`` is what the summary counts it under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_source(file: SourceFile, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """The file's text; ``SkippedFile`` when it is binary, too large, generated, empty or undecodable."""
    name = file.path.rsplit("/", 1)[-1]
    lower = name.lower()
    suffix = os.path.splitext(lower)[1]
    if suffix in BINARY_SUFFIXES:
        raise SkippedFile("binary")
    if name in GENERATED_NAMES or lower.endswith(GENERATED_SUFFIXES):
        raise SkippedFile("generated (lock file, minified, source map)")
    if file.size > max_bytes:
        raise SkippedFile(f"larger than {max_bytes // 1024} KiB")
    if file.size == 0:
        raise SkippedFile("empty")
    try:
        data = file.absolute.read_bytes()
    except OSError:
        raise SkippedFile("missing or unreadable")
    if suffix == ".pdf":
        return _pdf_text(data)
    text = decode(data)
    if text is None:
        raise SkippedFile("binary" if b"\0" in data[:SNIFF_BYTES] else "not UTF-8 or UTF-16 text")
    if suffix in (".html", ".htm", ".xhtml"):
        text = html_text(text)
    if not text.strip():
        raise SkippedFile("empty")
    return text


def decode(data: bytes) -> str | None:
    """UTF-8 (with or without BOM), or UTF-16 with a BOM; anything else is refused rather than guessed."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            return None
        return None if "\0" in text else text  # UTF-32 starts with the UTF-16 LE mark; its text is full of NULs
    if b"\0" in data[:SNIFF_BYTES]:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


class _HtmlText(HTMLParser):
    """Text of an HTML page that keeps every source line on its line number: tags, comments, scripts and styles are
    dropped but their newlines kept, so a chunk's line span points into the .html file itself."""

    HIDDEN = frozenset({"script", "style", "noscript", "template"})
    # elements whose text a browser never runs into its neighbours' ("<li>Home</li><li>About</li>")
    BLOCKS = frozenset("""address article aside blockquote body br caption dd details dialog div dl dt fieldset figcaption
        figure footer form h1 h2 h3 h4 h5 h6 head header hr html li main nav ol option p pre section summary table tbody
        td tfoot th thead title tr ul""".split())

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.ended = False

    def _newlines(self, text: str | None) -> None:
        if text:
            self.parts.append("\n" * text.count("\n"))

    def _separate(self, tag: str) -> None:
        if tag in self.BLOCKS and not self.hidden:
            self.parts.append(" ")

    def handle_starttag(self, tag, attrs) -> None:
        self._separate(tag)
        self.hidden += tag in self.HIDDEN
        self._newlines(self.get_starttag_text())

    def handle_startendtag(self, tag, attrs) -> None:
        self._separate(tag)
        self._newlines(self.get_starttag_text())

    def handle_endtag(self, tag) -> None:
        self.hidden = max(0, self.hidden - (tag in self.HIDDEN))
        self._separate(tag)
        self.ended = True

    def parse_endtag(self, i: int) -> int:
        # an end tag can span lines too ("</a\n>", as Prettier writes them); handle_endtag does not see its text
        self.ended = False
        end = super().parse_endtag(i)
        if self.ended and end > i:
            self._newlines(self.rawdata[i:end])
        return end

    def handle_data(self, data) -> None:
        if self.hidden:
            self._newlines(data)
        else:
            self.parts.append(data)

    def handle_comment(self, data) -> None:
        self._newlines(data)

    def handle_decl(self, decl) -> None:
        self._newlines(decl)

    def handle_pi(self, data) -> None:
        self._newlines(data)

    def unknown_decl(self, data) -> None:  # <![CDATA[...]]>
        self._newlines(data)


def html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return re.sub(r"[ \t]+\n", "\n", "".join(parser.parts))


def _pdf_text(data: bytes) -> str:
    """A PDF's text, pages joined with a form feed line (lines of the extracted text, not of the file)."""
    try:
        import io

        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError:
        raise SkippedFile("PDF (pip install 'modernretrieval[docs]' to read PDFs)")
    try:
        pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError):
        raise SkippedFile("unreadable PDF")
    text = "\n\f\n".join(pages)
    if not text.strip():
        raise SkippedFile("empty")
    return text


def files_under(paths: Iterable[str], prefix: str) -> Iterator[str]:
    """The indexed paths equal to ``prefix`` or inside the folder it names."""
    prefix = prefix.strip("/")
    for path in paths:
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            yield path
