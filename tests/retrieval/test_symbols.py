"""retrieval.codebase.symbols: the definitions of each supported language on small realistic files (names, kinds,
whole-definition line spans written out by hand, methods with their class), the regex fallback (a grammar or
tree-sitter missing, a huge file, a parse out of time, a parser that throws), broken and odd text, ``symbols_in`` at
chunk borders, and the symbols an index stores with each chunk."""

from __future__ import annotations

import json
import re
import threading

import pytest

from retrieval.codebase import symbols
from retrieval.codebase.symbols import Symbol, definitions, from_rows, rows, symbol_names, symbols_in

SNIPPETS = {
    "a.py": '''\
"""Users."""
import os

MAX_USERS = 100
_DEFAULT_ROLE: str = "guest"
logger = None


@dataclass
class User:
    name: str

    def greet(self) -> str:
        def inner():
            return 1
        return f"hi {self.name}"

    @property
    def upper(self):
        return self.name.upper()


def get_user_by_id(user_id: int) -> User:
    return User(str(user_id))
''',
    "a.ts": '''\
import { Db } from "./db";

export const MAX_RETRIES = 3;
export const userSlice = createSlice({});

export interface UserRecord {
  id: number;
  find(id: number): UserRecord;
}

export type UserId = number;

enum Role { Admin, Guest }

export class UserService {
  private cache = new Map();

  constructor(private db: Db) {}

  @cached()
  async getUserById(id: UserId): Promise<UserRecord> {
    return this.db.find(id);
  }

  handle = (e: Event) => {
    return e;
  };
}

export function formatUser(u: UserRecord): string {
  return `${u.id}`;
}

const parseUser = (raw: string) => JSON.parse(raw);

namespace Legacy {
  export function old() {}
}
''',
    "a.go": '''\
package users

const MaxUsers = 100

var ErrNotFound = errors.New("not found")

type User struct {
	ID   int
	Name string
}

type Store interface {
	Get(id int) (*User, error)
}

type ID = int

func (s *store) GetUserByID(id int) (*User, error) {
	return nil, ErrNotFound
}

func NewStore() *store {
	return &store{}
}
''',
    "a.rs": '''\
use std::fmt;

pub const MAX_USERS: usize = 100;
static GREETING: &str = "hi";

#[derive(Debug, Clone)]
pub struct User {
    pub id: u64,
}

pub enum Role {
    Admin,
    Guest,
}

pub trait Repo {
    fn get(&self, id: u64) -> Option<User>;
}

impl User {
    pub fn new(id: u64) -> Self {
        User { id }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", self.id)
    }
}

pub fn get_user_by_id(id: u64) -> User {
    User::new(id)
}

mod tests {
    fn helper() {}
}

macro_rules! user {
    ($id:expr) => { User::new($id) };
}
''',
    "A.java": '''\
package com.example.users;

import java.util.Map;

@Service
public class UserService {
    public static final int MAX_USERS = 100;
    private final Map<Long, User> cache;

    public UserService(Map<Long, User> cache) {
        this.cache = cache;
    }

    @Override
    public User getUserById(long id) {
        return cache.get(id);
    }

    interface Listener {
        void onUser(User u);
    }

    enum Role { ADMIN, GUEST }

    record Pair(long a, long b) {}
}
''',
    "a.c": '''\
#include <stdio.h>

#define MAX_USERS 100
#define SQUARE(x) ((x) * (x))

struct user {
    int id;
    char *name;
};

typedef struct user user_t;
typedef int (*user_cb)(user_t *);

enum role { ADMIN, GUEST };

static int count_users(void);

static char *user_name(user_t *u)
{
    return u->name;
}

int main(int argc, char **argv)
{
    return 0;
}
''',
    "a.cpp": '''\
#include <string>

namespace users {

template <typename T>
class Repo {
public:
    Repo();
    virtual ~Repo() = default;
    T get(int id) const;
    int size() const { return n_; }
private:
    int n_ = 0;
};

struct Point { int x, y; };

using UserId = long;

template <typename T>
T Repo<T>::get(int id) const {
    return T{};
}

std::string format_user(int id) {
    return std::to_string(id);
}

}  // namespace users
''',
    "A.cs": '''\
using System;

namespace Example.Users
{
    public interface IRepo
    {
        User Get(int id);
    }

    public class UserService : IRepo
    {
        public UserService() { }

        [Obsolete]
        public User GetUserById(int id)
        {
            return null;
        }

        public User Get(int id) => GetUserById(id);
    }

    public struct Point { public int X; }

    public enum Role { Admin, Guest }

    public record Person(string Name);
}
''',
    "a.rb": '''\
require "json"

MAX_USERS = 100

module Users
  class UserService < Base
    DEFAULT_ROLE = :guest

    def initialize(db)
      @db = db
    end

    def self.build
      new(nil)
    end

    def find_user?(id)
      @db.find(id)
    end
  end

  def helper
  end
end

def top_level(x)
  x
end
''',
    "a.php": '''\
<?php
namespace App\\Users;

const MAX_USERS = 100;

interface Repo {
    public function get(int $id);
}

class UserService implements Repo {
    const DEFAULT_ROLE = 'guest';

    public function __construct(private Repo $repo) {}

    public function get(int $id) {
        return $this->repo->get($id);
    }
}

function format_user($u) {
    return (string) $u;
}
''',
    "a.jsx": '''\
import React from "react";

export const API_URL = "/api";

export default function UserCard({ user }) {
  return <div className="card">{user.name}</div>;
}

class UserList extends React.Component {
  handleClick = () => {
    this.setState({});
  };

  render() {
    return <ul>{this.props.users.map((u) => <UserCard user={u} />)}</ul>;
  }
}

module.exports = { UserList };
''',
    "a.tsx": '''\
type Props = { name: string };

export const Greeting: React.FC<Props> = ({ name }) => {
  return <h1>Hello {name}</h1>;
};

export function App(): JSX.Element {
  return <Greeting name="x" />;
}
''',
    "b.h": '''\
#pragma once

namespace geo {

class Shape {
public:
    virtual double area() const = 0;
};

}
''',
}
# (name, kind, start_line, end_line, parent), in order; spans include decorators, attributes and template lines
EXPECTED = {
    "a.py": [
        ("MAX_USERS", "constant", 4, 4, None),
        ("_DEFAULT_ROLE", "constant", 5, 5, None),
        ("User", "class", 9, 20, None),
        ("greet", "method", 13, 16, "User"),
        ("inner", "function", 14, 15, "greet"),
        ("upper", "method", 18, 20, "User"),
        ("get_user_by_id", "function", 23, 24, None),
    ],
    "a.ts": [
        ("MAX_RETRIES", "constant", 3, 3, None),
        ("userSlice", "variable", 4, 4, None),
        ("UserRecord", "interface", 6, 9, None),
        ("find", "method", 8, 8, "UserRecord"),
        ("UserId", "type", 11, 11, None),
        ("Role", "enum", 13, 13, None),
        ("UserService", "class", 15, 28, None),
        ("constructor", "method", 18, 18, "UserService"),
        ("getUserById", "method", 20, 23, "UserService"),
        ("handle", "method", 25, 27, "UserService"),
        ("formatUser", "function", 30, 32, None),
        ("parseUser", "function", 34, 34, None),
        ("Legacy", "module", 36, 38, None),
        ("old", "function", 37, 37, "Legacy"),
    ],
    "a.go": [
        ("MaxUsers", "constant", 3, 3, None),
        ("ErrNotFound", "variable", 5, 5, None),
        ("User", "struct", 7, 10, None),
        ("Store", "interface", 12, 14, None),
        ("Get", "method", 13, 13, "Store"),
        ("ID", "type", 16, 16, None),
        ("GetUserByID", "method", 18, 20, "store"),
        ("NewStore", "function", 22, 24, None),
    ],
    "a.rs": [
        ("MAX_USERS", "constant", 3, 3, None),
        ("GREETING", "constant", 4, 4, None),
        ("User", "struct", 6, 9, None),
        ("Role", "enum", 11, 14, None),
        ("Repo", "trait", 16, 18, None),
        ("get", "method", 17, 17, "Repo"),
        ("new", "method", 21, 23, "User"),
        ("fmt", "method", 27, 29, "User"),
        ("get_user_by_id", "function", 32, 34, None),
        ("tests", "module", 36, 38, None),
        ("helper", "function", 37, 37, "tests"),
        ("user", "macro", 40, 42, None),
    ],
    "A.java": [
        ("UserService", "class", 5, 26, None),
        ("MAX_USERS", "constant", 7, 7, "UserService"),
        ("UserService", "method", 10, 12, "UserService"),
        ("getUserById", "method", 14, 17, "UserService"),
        ("Listener", "interface", 19, 21, "UserService"),
        ("onUser", "method", 20, 20, "Listener"),
        ("Role", "enum", 23, 23, "UserService"),
        ("Pair", "class", 25, 25, "UserService"),
    ],
    "a.c": [
        ("MAX_USERS", "constant", 3, 3, None),
        ("SQUARE", "macro", 4, 4, None),
        ("user", "struct", 6, 9, None),
        ("user_t", "type", 11, 11, None),
        ("user_cb", "type", 12, 12, None),
        ("role", "enum", 14, 14, None),
        ("user_name", "function", 18, 21, None),
        ("main", "function", 23, 26, None),
    ],
    "a.cpp": [
        ("users", "module", 3, 29, None),
        ("Repo", "class", 5, 14, "users"),
        ("Repo", "method", 8, 8, "Repo"),
        ("~Repo", "method", 9, 9, "Repo"),
        ("get", "method", 10, 10, "Repo"),
        ("size", "method", 11, 11, "Repo"),
        ("Point", "struct", 16, 16, "users"),
        ("UserId", "type", 18, 18, "users"),
        ("get", "method", 20, 23, "Repo"),
        ("format_user", "function", 25, 27, "users"),
    ],
    "A.cs": [
        ("Example.Users", "module", 3, 28, None),
        ("IRepo", "interface", 5, 8, "Example.Users"),
        ("Get", "method", 7, 7, "IRepo"),
        ("UserService", "class", 10, 21, "Example.Users"),
        ("UserService", "method", 12, 12, "UserService"),
        ("GetUserById", "method", 14, 18, "UserService"),
        ("Get", "method", 20, 20, "UserService"),
        ("Point", "struct", 23, 23, "Example.Users"),
        ("Role", "enum", 25, 25, "Example.Users"),
        ("Person", "class", 27, 27, "Example.Users"),
    ],
    "a.rb": [
        ("MAX_USERS", "constant", 3, 3, None),
        ("Users", "module", 5, 24, None),
        ("UserService", "class", 6, 20, "Users"),
        ("DEFAULT_ROLE", "constant", 7, 7, "UserService"),
        ("initialize", "method", 9, 11, "UserService"),
        ("build", "method", 13, 15, "UserService"),
        ("find_user?", "method", 17, 19, "UserService"),
        ("helper", "method", 22, 23, "Users"),
        ("top_level", "function", 26, 28, None),
    ],
    "a.php": [
        ("App\\Users", "module", 2, 2, None),
        ("MAX_USERS", "constant", 4, 4, None),
        ("Repo", "interface", 6, 8, None),
        ("get", "method", 7, 7, "Repo"),
        ("UserService", "class", 10, 18, None),
        ("DEFAULT_ROLE", "constant", 11, 11, "UserService"),
        ("__construct", "method", 13, 13, "UserService"),
        ("get", "method", 15, 17, "UserService"),
        ("format_user", "function", 20, 22, None),
    ],
    "a.jsx": [
        ("API_URL", "constant", 3, 3, None),
        ("UserCard", "function", 5, 7, None),
        ("UserList", "class", 9, 17, None),
        ("handleClick", "method", 10, 12, "UserList"),
        ("render", "method", 14, 16, "UserList"),
    ],
    "a.tsx": [
        ("Props", "type", 1, 1, None),
        ("Greeting", "function", 3, 5, None),
        ("App", "function", 7, 9, None),
    ],
    "b.h": [
        ("geo", "module", 3, 10, None),
        ("Shape", "class", 5, 8, "geo"),
        ("area", "method", 7, 7, "Shape"),
    ],
}
GRAMMAR = {"a.py": "python", "a.ts": "typescript", "a.go": "go", "a.rs": "rust", "A.java": "java", "a.c": "c",
           "a.cpp": "cpp", "A.cs": "csharp", "a.rb": "ruby", "a.php": "php", "a.jsx": "javascript", "a.tsx": "tsx",
           "b.h": "cpp"}


def spans(found: list[Symbol]) -> list[tuple]:
    return [(s.name, s.kind, s.start_line, s.end_line, s.parent) for s in found]


def lines_of(text: str, symbol: Symbol) -> list[str]:
    return text.split("\n")[symbol.start_line - 1:symbol.end_line]


# ----- 1. every language with a grammar, parsed by tree-sitter
@pytest.mark.parametrize("path", list(SNIPPETS))
def test_definitions_of_each_language(path):
    assert symbols.grammar_available(GRAMMAR[path])  # the parser answers, not the regex
    found = definitions(path, SNIPPETS[path])
    assert spans(found) == EXPECTED[path]
    assert [s.start_line for s in found] == sorted(s.start_line for s in found)
    for symbol in found:  # each span is the definition itself: its name is in it, its first line is not blank
        assert symbol.kind in symbols.KINDS
        assert symbol.name.split("\\")[-1] in "\n".join(lines_of(SNIPPETS[path], symbol)), symbol
        assert lines_of(SNIPPETS[path], symbol)[0].strip(), symbol


def test_spans_cover_whole_definitions():
    text = SNIPPETS["a.py"]
    by_name = {s.name: s for s in definitions("a.py", text)}
    assert lines_of(text, by_name["User"])[0] == "@dataclass"  # the decorator belongs to the class
    assert lines_of(text, by_name["User"])[-1] == "        return self.name.upper()"
    assert lines_of(text, by_name["upper"])[:2] == ["    @property", "    def upper(self):"]
    rust = SNIPPETS["a.rs"]
    user = next(s for s in definitions("a.rs", rust) if s.name == "User")
    assert lines_of(rust, user) == ["#[derive(Debug, Clone)]", "pub struct User {", "    pub id: u64,", "}"]
    cpp = SNIPPETS["a.cpp"]
    get = [s for s in definitions("a.cpp", cpp) if s.name == "get"][-1]
    assert lines_of(cpp, get)[0] == "template <typename T>" and lines_of(cpp, get)[-1] == "}"


def test_grammar_choice_by_suffix():
    """.tsx has its own grammar (JSX in TypeScript); a C++ header named .h falls back from C to C++."""
    assert symbols._grammar_names("x.tsx", "typescript") == ("tsx",)
    assert symbols._grammar_names("x.ts", "typescript") == ("typescript",)
    assert symbols._grammar_names("x.h", "c") == ("c", "cpp")
    c_header = "#define LIMIT 4\nstruct point { int x; };\nint area(struct point *p);\n"
    assert spans(definitions("p.h", c_header)) == [("LIMIT", "constant", 1, 1, None),
                                                   ("point", "struct", 2, 2, None)]
    source = SNIPPETS["a.tsx"].encode()
    errors = {}
    for name in ("tsx", "typescript"):
        parser, _ = symbols._tools(name, symbols._grammar(name))
        errors[name] = symbols._error_count(symbols._parse(parser, source).root_node)
    assert errors["tsx"] == 0 and errors["typescript"] > 0  # plain TypeScript reads JSX as type assertions


def test_prose_and_data_files_define_nothing():
    assert definitions("README.md", "# Title\n\ndef looks_like_code():\n") == []
    assert definitions("conf.yaml", "class: fast\nfunction foo\n") == []
    assert definitions("data.json", '{"def": 1}') == []


# ----- 2. the regex fallback
def without_grammars(monkeypatch, *names: str) -> None:
    """As if the grammar packages (or tree-sitter itself) were not installed: the import fails, once per grammar."""
    real = symbols.importlib.import_module
    modules = {symbols.GRAMMARS[name][0] for name in names}

    def refuse(name, *args, **kwargs):
        if name in modules:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(symbols, "_grammars", {})  # forget what was loaded; restored after the test
    monkeypatch.setattr(symbols.importlib, "import_module", refuse)


def test_fallback_when_a_grammar_is_missing(monkeypatch):
    without_grammars(monkeypatch, "python", "go")
    assert not symbols.grammar_available("python") and not symbols.grammar_available("go")
    assert symbols.grammar_available("rust")  # the others still parse
    assert spans(definitions("a.py", SNIPPETS["a.py"])) == EXPECTED["a.py"]  # the regex gets Python right
    assert spans(definitions("a.go", SNIPPETS["a.go"])) == [
        ("users", "module", 1, 1, None),
        ("User", "type", 7, 10, None),
        ("Store", "type", 12, 14, None),
        ("ID", "type", 16, 16, None),
        ("GetUserByID", "function", 18, 20, None),  # the parser knows it for a method of store; the regex does not
        ("NewStore", "function", 22, 24, None)]
    signature = "def load(\n    path,\n    mode='r',\n) -> str:\n    return path\n\n\nclass Store:\n    pass\n"
    assert spans(definitions("load.py", signature)) == [("load", "function", 1, 5, None),
                                                        ("Store", "class", 8, 9, None)]


def test_fallback_when_tree_sitter_is_missing(monkeypatch):
    real = symbols.importlib.import_module
    monkeypatch.setattr(symbols, "_grammars", {})
    monkeypatch.setitem(__import__("sys").modules, "tree_sitter", None)  # "import tree_sitter" raises ImportError
    monkeypatch.setattr(symbols.importlib, "import_module", real)
    assert not any(symbols.grammar_available(name) for name in symbols.GRAMMARS)
    found = spans(definitions("a.rs", SNIPPETS["a.rs"]))
    assert ("new", "method", 21, 23, "User") in found and ("fmt", "method", 27, 29, "User") in found
    assert ("get_user_by_id", "function", 32, 34, None) in found and ("tests", "module", 36, 38, None) in found


KOTLIN = """\
package com.example

const val MAX_USERS = 100

data class User(val id: Long)

class UserService(private val repo: Repo) {
    fun getUserById(id: Long): User {
        return repo.find(id)
    }

    private suspend fun refresh() {
    }
}

fun main() {
}
"""
LUA = "local M = {}\n\nfunction M.get_user(id)\n  return id\nend\n\nlocal function helper()\nend\n\nreturn M\n"
SHELL = "#!/bin/sh\nusage() {\n  echo usage\n}\n\nfunction build {\n  make\n}\n"


def test_fallback_for_languages_without_a_grammar():
    assert spans(definitions("Users.kt", KOTLIN)) == [
        ("com.example", "module", 1, 1, None),
        ("User", "class", 5, 5, None),
        ("UserService", "class", 7, 14, None),
        ("getUserById", "method", 8, 10, "UserService"),
        ("refresh", "method", 12, 13, "UserService"),
        ("main", "function", 16, 17, None)]
    assert spans(definitions("users.lua", LUA)) == [("get_user", "function", 3, 5, "M"),
                                                    ("helper", "function", 7, 8, None)]
    assert spans(definitions("build.sh", SHELL)) == [("usage", "function", 2, 4, None),
                                                     ("build", "function", 6, 8, None)]


def test_fallback_knows_every_keyword_chunking_breaks_before():
    from retrieval.codebase.chunking import CODE_BOUNDARY

    keywords = re.search(r"\(\?:((?:\w+\|)+\w+)\)\\b", CODE_BOUNDARY.pattern).group(1).split("|")
    assert "def" in keywords and "namespace" in keywords
    for keyword in keywords:
        line = f"{keyword} Thing {{"
        assert CODE_BOUNDARY.match(line)
        found = symbols._regex_definitions(line + "\n}\n", "kotlin")
        assert [s.name for s in found] == ([] if keyword == "impl" else ["Thing"]), keyword  # impl: a scope only


def test_huge_files_and_slow_parses_take_the_regex(monkeypatch):
    parsed = []
    real = symbols._parsed
    monkeypatch.setattr(symbols, "_parsed", lambda names, source: parsed.append(names) or real(names, source))
    text = SNIPPETS["a.go"]
    assert spans(definitions("a.go", text)) == EXPECTED["a.go"] and parsed == [("go",)]
    monkeypatch.setattr(symbols, "MAX_PARSE_BYTES", len(text.encode()) - 1)
    found = definitions("a.go", text)
    assert parsed == [("go",)]  # not parsed again
    assert ("GetUserByID", "function", 18, 20, None) in spans(found)  # the regex's answer
    monkeypatch.setattr(symbols, "MAX_PARSE_BYTES", 1 << 20)
    monkeypatch.setattr(symbols, "PARSE_SECONDS", 0.0)  # every parse runs out of time
    assert symbols._parsed(("go",), text.encode()) is None
    assert ("GetUserByID", "function", 18, 20, None) in spans(definitions("a.go", text))
    monkeypatch.setattr(symbols, "PARSE_SECONDS", 2.0)
    assert ("GetUserByID", "method", 18, 20, "store") in spans(definitions("a.go", text))  # the parser is fine after


def test_a_pattern_a_grammar_does_not_know_is_dropped_not_the_language(monkeypatch):
    module, function, query, method_in = symbols.GRAMMARS["go"]
    unknown = "(no_such_node name: (identifier) @name) @definition.function\n"
    monkeypatch.setitem(symbols.GRAMMARS, "go", (module, function, unknown + query, method_in))
    monkeypatch.setattr(symbols, "_grammars", {})
    monkeypatch.setattr(symbols._local, "tools", {}, raising=False)  # parsers of the new grammar
    assert symbols.grammar_available("go")
    assert symbols._grammar("go").query.pattern_count == len(symbols._patterns(query))
    assert spans(definitions("a.go", SNIPPETS["a.go"])) == EXPECTED["a.go"]


def test_a_parser_that_throws_does_not_stop_indexing(monkeypatch):
    def broken(*args):
        raise RuntimeError("a grammar bug")

    monkeypatch.setattr(symbols, "_symbols", broken)
    assert spans(definitions("a.py", SNIPPETS["a.py"])) == EXPECTED["a.py"]  # from the regex


# ----- 3. broken and odd text
BROKEN_PY = """\
def first(a):
    return a + 1


class Second:
    def method(self):
        return 2


def broken(:
    pass
"""


def test_a_syntax_error_keeps_the_definitions_before_it():
    found = spans(definitions("broken.py", BROKEN_PY))
    assert found[:3] == [("first", "function", 1, 2, None), ("Second", "class", 5, 7, None),
                         ("method", "method", 6, 7, "Second")]
    ts = SNIPPETS["a.ts"].replace("export function formatUser(u: UserRecord): string {",
                                  "export function formatUser(u: UserRecord): string {{{ ((")
    found = spans(definitions("a.ts", ts))
    assert found[:10] == EXPECTED["a.ts"][:10]  # everything up to the class that ends before the error


def test_empty_odd_and_non_utf8_text():
    assert definitions("a.py", "") == [] and definitions("a.go", "") == [] and definitions("x.kt", "") == []
    assert definitions("a.py", "\n\n   \n") == []
    # a latin-1 byte read with surrogateescape: a lone surrogate, which UTF-8 cannot encode
    odd = b"# caf\xe9\ndef f():\n    pass\n".decode("utf-8", "surrogateescape")
    assert spans(definitions("a.py", odd)) == [("f", "function", 2, 3, None)]
    # names and lines in non-ASCII text; CRLF line ends; a form feed is not a line end
    text = "# ünïcödé\r\ndef café(x):\r\n    return x\r\n\f\r\nclass Ça:\r\n    pass\r\n"
    assert spans(definitions("u.py", text)) == [("café", "function", 2, 3, None), ("Ça", "class", 5, 6, None)]
    assert spans(definitions("u.go", "package p\n\nfunc 名前() {}\n")) == [("名前", "function", 3, 3, None)]
    assert definitions("bin.c", "\x00\x01\x02 int main(void) { return 0; }") is not None  # no crash


def test_threads_get_the_same_answers():
    expected = {path: definitions(path, text) for path, text in SNIPPETS.items()}
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append({path: definitions(path, text) for path, text in SNIPPETS.items()})
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 20 and all(r == expected for r in results)


# ----- 4. a chunk's own symbols, and how they are stored
def test_symbols_in_at_chunk_borders():
    found = [Symbol("a", "function", 1, 3), Symbol("b", "class", 5, 20), Symbol("m", "method", 6, 9, "b"),
             Symbol("n", "method", 10, 20, "b"), Symbol("c", "function", 22, 22)]

    def names(start: int, end: int) -> list[str]:
        return [s.name for s in symbols_in(found, start, end)]

    assert names(1, 22) == ["a", "b", "m", "n", "c"]
    assert names(1, 4) == ["a"]  # the span is inclusive at both ends
    assert names(1, 5) == ["a", "b"]
    assert names(5, 5) == ["b"]
    assert names(6, 10) == ["m", "n"]
    assert names(11, 21) == []  # inside a long definition, none starts
    assert names(2, 3) == []  # a definition that started in the chunk before is not this chunk's
    assert names(22, 22) == ["c"] and names(23, 40) == []
    assert symbols_in([], 1, 10) == []


def test_symbols_in_real_chunks(tokenizer_dir):
    from tokenizers import Tokenizer

    from retrieval.codebase.chunking import chunk_text

    text = "".join(f"def handler_{i}(request):\n    '''Handle request kind {i}.'''\n"
                   f"    value = request.get('field_{i}')\n    return value * {i}\n\n\n" for i in range(40))
    found = definitions("handlers.py", text)
    assert [s.name for s in found] == [f"handler_{i}" for i in range(40)]
    chunks = chunk_text(text, Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")), 128, code=True)
    assert len(chunks) > 4
    seen = []
    for chunk in chunks:
        own = symbols_in(found, chunk.start_line, chunk.end_line)
        assert own and all(f"def {s.name}(" in chunk.text for s in own)
        seen += own
    assert list(dict.fromkeys(seen)) == found  # each definition in the chunk(s) where it starts, none lost


def test_rows_are_compact_json_and_give_names():
    found = definitions("a.py", SNIPPETS["a.py"])
    stored = json.loads(json.dumps(rows(found)))
    assert stored[3] == ["greet", "method", 13, 16, "User"] and stored[0] == ["MAX_USERS", "constant", 4, 4, None]
    assert from_rows(stored) == found
    assert symbol_names({"symbols": stored}) == ["MAX_USERS", "_DEFAULT_ROLE", "User", "greet", "inner", "upper",
                                                 "get_user_by_id"]
    assert symbol_names({"symbols": [["get", "method", 1, 2, "A"], ["get", "method", 4, 5, "B"]]}) == ["get"]
    assert symbol_names({"lang": "markdown"}) == [] and symbol_names({"symbols": []}) == []


# ----- 5. the index stores each chunk's symbols
@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tokenizer_dir):
    from support import dense_model_folder, single_torch_thread

    from retrieval.codebase.retriever import Retriever

    threads = single_torch_thread()
    next(threads)
    model = dense_model_folder(tmp_path_factory.mktemp("dense") / "model")
    root = tmp_path_factory.mktemp("tree")
    files = {
        "app/handlers.py": "".join(f"def handler_{i}(request):\n    '''Handle request kind {i}.'''\n"
                                   f"    value = request.get('field_{i}')\n    return value * {i}\n\n\n"
                                   for i in range(30)),
        "app/users.go": SNIPPETS["a.go"],
        "app/Users.kt": KOTLIN,
        "README.md": "# Handlers\n\ndef is not code here.\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    retriever = Retriever(root, model=model, max_length=128, show_progress=False)
    retriever.index()
    stored = retriever.vectors.store.db.execute(
        "SELECT doc_id, source, start_line, end_line, metadata, text FROM documents")
    docs = {r[0]: {"source": r[1], "start_line": r[2], "end_line": r[3], "metadata": json.loads(r[4]), "text": r[5]}
            for r in stored}
    yield files, docs
    retriever.close()
    next(threads, None)


def test_each_chunk_carries_the_symbols_it_defines(indexed):
    files, docs = indexed
    chunks = sorted((d for d in docs.values() if d["source"] == "app/handlers.py"), key=lambda d: d["start_line"])
    assert len(chunks) > 4  # the file is split, and each chunk has only its own definitions
    seen = []
    for doc in chunks:
        stored = doc["metadata"]["symbols"]
        # counted here from the chunk's own text: the functions whose "def" line is in it
        assert symbol_names(doc["metadata"]) == re.findall(r"^def (\w+)\(", doc["text"], re.MULTILINE)
        for name, kind, start, end, parent in stored:
            assert (kind, parent) == ("function", None) and end == start + 3
            assert doc["start_line"] <= start <= doc["end_line"]
            assert files["app/handlers.py"].split("\n")[start - 1] == f"def {name}(request):"
        seen += [row[0] for row in stored]
    assert list(dict.fromkeys(seen)) == [f"handler_{i}" for i in range(30)]
    go = sorted((d for d in docs.values() if d["source"] == "app/users.go"), key=lambda d: d["start_line"])
    union = [tuple(row) for d in go for row in d["metadata"]["symbols"]]
    assert list(dict.fromkeys(union)) == EXPECTED["a.go"]  # tree-sitter's answer, methods with their receiver
    kotlin = [row for d in docs.values() if d["source"] == "app/Users.kt" for row in d["metadata"]["symbols"]]
    assert ["getUserById", "method", 8, 10, "UserService"] in kotlin  # the regex fallback's answer
    readme = [d for d in docs.values() if d["source"] == "README.md"]
    assert len(readme) == 1 and "symbols" not in readme[0]["metadata"]  # prose has none
