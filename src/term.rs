//! Literal Erlang and Elixir terms: hexmirror's one term parser.
//!
//! Owns the tokenizer and recursive-descent parser for the literal subset of both term syntaxes,
//! the [`Term`] tree it builds (every node with the [`Position`] it starts at) and its errors
//! ([`TermError`], each naming a line and column). Two kinds of file are read with it:
//!
//! - lock files (`lockfile`): a `mix.lock` is one Elixir term ([`parse_elixir`]); a
//!   `rebar.lock` is Erlang terms each ended by `.` ([`parse_erlang`] with [`Literals::Lock`]);
//! - a Hex tarball's `metadata.config` (`hex_tarball`): Erlang terms as Erlang's printer writes
//!   them ([`parse_erlang`] with [`Literals::All`]).
//!
//! Both syntaxes share tuples, lists, maps (`%{}` in Elixir, `#{}` in Erlang, with `=>` or,
//! in Elixir, `key:` entries), atoms, strings, integers (with `_` separators; Erlang also
//! `BASE#DIGITS`) and comments. Elixir adds keyword lists and charlists; Erlang adds binaries
//! (`<<"text">>`, `<<"text"/utf8>>`, `<<1,2,3>>`) and the concatenation of adjacent strings.
//! Trailing commas are accepted in both. [`Literals::All`] further reads floats, character
//! literals (`$a`), improper lists (`[H | T]`) and binaries of any bytes, and follows Erlang
//! where the lock file grammar is narrower (`# {` with a space, adjacent strings inside a
//! binary, `\^` before any ASCII character). Lock files are held to [`Literals::Lock`], where
//! all of that is an error at the place it starts, exactly as lock files were always read.
//!
//! Nothing is evaluated: variables, expressions, interpolation and function calls are errors.
//! The parser does no I/O and never panics. Nesting is limited to [`MAX_DEPTH`] containers, so
//! hostile input cannot exhaust the stack; the size of the input is the caller's to bound.

use std::fmt;

/// The deepest nesting of tuples, lists, maps and binaries accepted.
pub const MAX_DEPTH: usize = 64;

/// A place in the input: 1-based line and 1-based column counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Line number, from 1.
    pub line: u32,
    /// Column number in characters, from 1.
    pub column: u32,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Why a text is not a sequence of literal terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermError {
    /// A version-control merge conflict marker at the start of a line.
    #[error("{at}: merge conflict marker")]
    MergeConflict {
        /// Where the marker starts.
        at: Position,
    },
    /// A character that cannot start any token.
    #[error("{at}: unexpected character {found:?}")]
    UnexpectedChar {
        /// Where the character is.
        at: Position,
        /// The character.
        found: char,
    },
    /// A string, quoted atom or similar was not closed.
    #[error("{at}: unterminated {what}")]
    Unterminated {
        /// Where it starts.
        at: Position,
        /// What kind of token it is.
        what: &'static str,
    },
    /// A backslash escape that is malformed or names no character.
    #[error("{at}: invalid escape sequence in {what}")]
    InvalidEscape {
        /// Where the backslash is.
        at: Position,
        /// What kind of token it is in.
        what: &'static str,
    },
    /// `#{...}` inside an Elixir string: an expression, not a literal.
    #[error("{at}: string interpolation is not allowed in a literal term")]
    Interpolation {
        /// Where the `#{` is.
        at: Position,
    },
    /// An integer that does not fit in 64 bits (or has a bad base).
    #[error("{at}: integer out of range")]
    IntegerOutOfRange {
        /// Where the integer starts.
        at: Position,
    },
    /// A token that does not fit the grammar at this point.
    #[error("{at}: expected {expected}, found {found}")]
    Unexpected {
        /// Where the token is.
        at: Position,
        /// What the grammar allows here.
        expected: &'static str,
        /// What was there.
        found: String,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    #[error("{at}: nesting deeper than {limit} levels")]
    TooDeep {
        /// Where the level over the limit opens.
        at: Position,
        /// The limit.
        limit: usize,
    },
    /// A binary segment whose value is not a byte (or, typed `/utf8`, not a character).
    #[error("{at}: binary segment value out of range")]
    SegmentOutOfRange {
        /// Where the segment starts.
        at: Position,
    },
    /// Under [`Literals::Lock`], a binary whose bytes are not UTF-8.
    #[error("{at}: binary is not valid UTF-8")]
    NotUtf8 {
        /// Where the binary opens.
        at: Position,
    },
}

/// Which Erlang literals [`parse_erlang`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Literals {
    /// What lock files hold: integers but no floats or character literals, proper lists only,
    /// binaries of UTF-8 text only.
    Lock,
    /// Everything Erlang's printer (`io_lib`) writes for plain data, as in a Hex tarball's
    /// `metadata.config`: also floats, character literals (`$a`, an integer), improper lists
    /// (`[H | T]`) and binaries of any bytes.
    All,
}

/// A literal term with the position where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// What the term is.
    pub value: Value,
    /// Where it starts.
    pub at: Position,
}

/// The kinds of literal term.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An atom; Elixir's `true`, `false` and `nil` included.
    Atom(String),
    /// An Elixir string or charlist, or an Erlang string (adjacent literals concatenated).
    Str(String),
    /// An Erlang binary: UTF-8 whenever it was read under [`Literals::Lock`].
    Binary(Vec<u8>),
    Int(i64),
    /// Only under [`Literals::All`].
    Float(f64),
    Tuple(Vec<Term>),
    List(Vec<Term>),
    /// `[a, b | tail]`, only under [`Literals::All`]: the elements, then the tail.
    ImproperList(Vec<Term>, Box<Term>),
    /// Entries in the order written.
    Map(Vec<(Term, Term)>),
}

impl Term {
    /// The name of an atom.
    pub fn atom(&self) -> Option<&str> {
        match &self.value {
            Value::Atom(atom) => Some(atom),
            _ => None,
        }
    }

    /// A string, or a binary that is UTF-8 text.
    pub fn string(&self) -> Option<&str> {
        match &self.value {
            Value::Str(text) => Some(text),
            Value::Binary(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    /// A name written as an atom or a string.
    pub fn text(&self) -> Option<&str> {
        self.atom().or_else(|| self.string())
    }

    /// `nil` (Elixir) or `undefined` (Erlang): a value that is not there.
    pub fn is_absent(&self) -> bool {
        matches!(self.atom(), Some("nil" | "undefined"))
    }

    /// A short description for error messages (`atom `hex``, `a tuple of 3 element(s)`).
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Atom(atom) => format!("atom `{}`", snippet(atom)),
            Value::Str(text) => format!("string {:?}", snippet(text)),
            Value::Binary(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => format!("string {:?}", snippet(text)),
                Err(_) => format!("a binary of {} byte(s)", bytes.len()),
            },
            Value::Int(n) => format!("integer {n}"),
            Value::Float(x) => format!("float {x}"),
            Value::Tuple(items) => format!("a tuple of {} element(s)", items.len()),
            Value::List(_) => "a list".to_string(),
            Value::ImproperList(..) => "an improper list".to_string(),
            Value::Map(_) => "a map".to_string(),
        }
    }
}

/// At most 40 characters of `text`, for error messages.
pub fn snippet(text: &str) -> String {
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(40).collect();
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// An Elixir document (a `mix.lock`): one term, or `None` when there is nothing but whitespace
/// and comments.
pub fn parse_elixir(text: &str) -> Result<Option<Term>, TermError> {
    let (tokens, end) = Lexer::new(text, Dialect::Elixir, Literals::Lock).tokenize()?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut parser = Parser { tokens: &tokens, pos: 0, end, dialect: Dialect::Elixir, literals: Literals::Lock };
    let term = parser.term(0)?;
    if parser.peek().is_some() {
        return Err(parser.unexpected("end of input"));
    }
    Ok(Some(term))
}

/// An Erlang consult file (a `rebar.lock`, a `metadata.config`): terms, each followed by `.`.
pub fn parse_erlang(text: &str, literals: Literals) -> Result<Vec<Term>, TermError> {
    let (tokens, end) = Lexer::new(text, Dialect::Erlang, literals).tokenize()?;
    let mut parser = Parser { tokens: &tokens, pos: 0, end, dialect: Dialect::Erlang, literals };
    let mut terms = Vec::new();
    while parser.peek().is_some() {
        terms.push(parser.term(0)?);
        if !parser.eat(&Tok::Dot) {
            return Err(parser.unexpected("`.` after the term"));
        }
    }
    Ok(terms)
}

// ---------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Elixir,
    Erlang,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Comma,
    /// `%{` in Elixir, `#{` in Erlang.
    MapOpen,
    /// `=>`
    Arrow,
    /// Erlang `<<`
    BinOpen,
    /// Erlang `>>`
    BinClose,
    /// Erlang `/` (binary segment type)
    Slash,
    /// Erlang `.` ending a term
    Dot,
    /// Erlang `|` before the tail of an improper list ([`Literals::All`])
    Bar,
    Atom(String),
    Str(String),
    /// An integer, or an Erlang character literal `$c`.
    Int(i64),
    /// An Erlang float ([`Literals::All`])
    Float(f64),
    /// Elixir keyword key: `name:` or `"name":`
    Key(String),
    /// A bare identifier that is not an atom: Elixir `true`/`false`/`nil` or anything
    /// else, Erlang variables.
    Ident(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    at: Position,
}

fn describe_token(token: Option<&Token>) -> String {
    let Some(token) = token else {
        return "end of input".to_string();
    };
    match &token.tok {
        Tok::LBrace => "`{`".to_string(),
        Tok::RBrace => "`}`".to_string(),
        Tok::LBracket => "`[`".to_string(),
        Tok::RBracket => "`]`".to_string(),
        Tok::Comma => "`,`".to_string(),
        Tok::MapOpen => "a map".to_string(),
        Tok::Arrow => "`=>`".to_string(),
        Tok::BinOpen => "`<<`".to_string(),
        Tok::BinClose => "`>>`".to_string(),
        Tok::Slash => "`/`".to_string(),
        Tok::Dot => "`.`".to_string(),
        Tok::Bar => "`|`".to_string(),
        Tok::Atom(atom) => format!("atom `{}`", snippet(atom)),
        Tok::Str(text) => format!("string {:?}", snippet(text)),
        Tok::Int(n) => format!("integer {n}"),
        Tok::Float(x) => format!("float {x}"),
        Tok::Key(key) => format!("keyword key `{}:`", snippet(key)),
        Tok::Ident(name) => format!("identifier `{}`", snippet(name)),
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: u32,
    column: u32,
    dialect: Dialect,
    literals: Literals,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str, dialect: Dialect, literals: Literals) -> Lexer<'a> {
        Lexer { src: src.strip_prefix('\u{feff}').unwrap_or(src), pos: 0, line: 1, column: 1, dialect, literals }
    }

    /// All tokens, and the position just past the input.
    fn tokenize(mut self) -> Result<(Vec<Token>, Position), TermError> {
        let mut tokens = Vec::new();
        while let Some(token) = self.next_token()? {
            tokens.push(token);
        }
        Ok((tokens, self.here()))
    }

    /// Erlang with every literal: floats, `$c`, `|`.
    fn all_erlang(&self) -> bool {
        self.dialect == Dialect::Erlang && self.literals == Literals::All
    }

    fn here(&self) -> Position {
        Position { line: self.line, column: self.column }
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line = self.line.saturating_add(1);
            self.column = 1;
        } else {
            self.column = self.column.saturating_add(1);
        }
        Some(c)
    }

    fn eat(&mut self, expected: char) -> bool {
        if self.peek() == Some(expected) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn skip_trivia(&mut self) {
        let comment = match self.dialect {
            Dialect::Elixir => '#',
            Dialect::Erlang => '%',
        };
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.bump();
            } else if c == comment {
                while let Some(c) = self.bump() {
                    if c == '\n' {
                        break;
                    }
                }
            } else {
                break;
            }
        }
    }

    fn next_token(&mut self) -> Result<Option<Token>, TermError> {
        self.skip_trivia();
        let at = self.here();
        let Some(c) = self.peek() else {
            return Ok(None);
        };
        if at.column == 1 && ["<<<<<<<", ">>>>>>>", "======="].iter().any(|m| self.rest().starts_with(m)) {
            return Err(TermError::MergeConflict { at });
        }
        let elixir = self.dialect == Dialect::Elixir;
        let second = self.peek_second();
        let tok = match c {
            '{' | '}' | '[' | ']' | ',' => {
                self.bump();
                match c {
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    _ => Tok::Comma,
                }
            }
            '=' if second == Some('>') => self.two(Tok::Arrow),
            '%' if elixir && second == Some('{') => self.two(Tok::MapOpen),
            '#' if !elixir && second == Some('{') => self.two(Tok::MapOpen),
            '#' if self.all_erlang() => {
                // `#` and `{` are two tokens in Erlang: space or a comment may come between.
                self.bump();
                self.skip_trivia();
                if !self.eat('{') {
                    return Err(TermError::UnexpectedChar { at, found: '#' });
                }
                Tok::MapOpen
            }
            '<' if !elixir && second == Some('<') => self.two(Tok::BinOpen),
            '>' if !elixir && second == Some('>') => self.two(Tok::BinClose),
            '/' if !elixir => {
                self.bump();
                Tok::Slash
            }
            '.' if !elixir => {
                self.bump();
                Tok::Dot
            }
            '|' if self.all_erlang() => {
                self.bump();
                Tok::Bar
            }
            '$' if self.all_erlang() => self.character(at)?,
            '"' => {
                let text = self.quoted('"', "string")?;
                if elixir && self.keyword_colon() {
                    Tok::Key(text)
                } else {
                    Tok::Str(text)
                }
            }
            '\'' if elixir => {
                let text = self.quoted('\'', "charlist")?;
                if self.keyword_colon() {
                    Tok::Key(text)
                } else {
                    Tok::Str(text)
                }
            }
            '\'' => Tok::Atom(self.quoted('\'', "quoted atom")?),
            ':' if elixir && second == Some('"') => {
                self.bump();
                Tok::Atom(self.quoted('"', "quoted atom")?)
            }
            ':' if elixir && second.is_some_and(is_ident_start) => {
                self.bump();
                Tok::Atom(self.identifier())
            }
            '-' if second.is_some_and(|c| c.is_ascii_digit()) => self.number(at)?,
            '0'..='9' => self.number(at)?,
            c if is_ident_start(c) => {
                let name = self.identifier();
                if elixir {
                    if self.keyword_colon() {
                        Tok::Key(name)
                    } else {
                        Tok::Ident(name)
                    }
                } else if c.is_lowercase() {
                    Tok::Atom(name)
                } else {
                    Tok::Ident(name)
                }
            }
            other => return Err(TermError::UnexpectedChar { at, found: other }),
        };
        Ok(Some(Token { tok, at }))
    }

    fn two(&mut self, tok: Tok) -> Tok {
        self.bump();
        self.bump();
        tok
    }

    /// After an Elixir identifier or string: a `:` followed by whitespace (or the end)
    /// makes it a keyword key. Consumes the colon when it does.
    fn keyword_colon(&mut self) -> bool {
        if self.peek() == Some(':') && self.peek_second().is_none_or(char::is_whitespace) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn identifier(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '@') {
            self.bump();
        }
        if self.dialect == Dialect::Elixir && matches!(self.peek(), Some('?' | '!')) {
            self.bump();
        }
        self.src[start..self.pos].to_string()
    }

    fn number(&mut self, at: Position) -> Result<Tok, TermError> {
        let out_of_range = || TermError::IntegerOutOfRange { at };
        let start = self.pos;
        let negative = self.eat('-');
        let whole = self.digits(10);
        let fraction_follows = self.peek() == Some('.') && self.peek_second().is_some_and(|c| c.is_ascii_digit());
        if fraction_follows && self.all_erlang() {
            return Ok(self.float(start));
        }
        let mut value = whole.ok_or_else(out_of_range)?;
        if self.dialect == Dialect::Erlang && self.peek() == Some('#') {
            let base = u32::try_from(value).ok().filter(|b| (2..=36).contains(b)).ok_or_else(out_of_range)?;
            self.bump();
            if !self.peek().is_some_and(|c| c.is_digit(base)) {
                return Err(TermError::Unexpected {
                    at: self.here(),
                    expected: "a digit",
                    found: self.peek().map_or("end of input".to_string(), |c| format!("{c:?}")),
                });
            }
            value = self.digits(base).ok_or_else(out_of_range)?;
        }
        if self.peek() == Some('.') && self.peek_second().is_some_and(|c| c.is_ascii_digit()) {
            return Err(TermError::Unexpected { at, expected: "an integer", found: "a float".to_string() });
        }
        Ok(Tok::Int(if negative { -value } else { value }))
    }

    /// The rest of a float whose sign and whole digits start at byte `start`; a `.` and a
    /// digit are next. An exponent (`e`, `E`, optionally signed) is taken only when digits
    /// follow it.
    fn float(&mut self, start: usize) -> Tok {
        self.bump();
        self.digits(10);
        if matches!(self.peek(), Some('e' | 'E')) {
            let mut ahead = self.rest().chars().skip(1);
            let exponent = match ahead.next() {
                Some('+' | '-') => ahead.next().is_some_and(|c| c.is_ascii_digit()),
                next => next.is_some_and(|c| c.is_ascii_digit()),
            };
            if exponent {
                self.bump();
                if matches!(self.peek(), Some('+' | '-')) {
                    self.bump();
                }
                self.digits(10);
            }
        }
        let text: String = self.src[start..self.pos].chars().filter(|&c| c != '_').collect();
        // Digits, one `.`, an optional exponent: always a valid Rust float (too large is infinity).
        Tok::Float(text.parse().unwrap_or(f64::NAN))
    }

    /// An Erlang character literal: `$` then a character or an escape sequence.
    fn character(&mut self, at: Position) -> Result<Tok, TermError> {
        const WHAT: &str = "character literal";
        self.bump();
        let escape_at = self.here();
        let code = match self.bump() {
            None => return Err(TermError::Unterminated { at, what: WHAT }),
            Some('\\') => {
                let mut out = String::new();
                self.escape(&mut out, escape_at, at, WHAT)?;
                out.chars().next().map_or(0, u32::from)
            }
            Some(c) => u32::from(c),
        };
        Ok(Tok::Int(i64::from(code)))
    }

    /// Digits of `base` with `_` separators; `None` on overflow.
    fn digits(&mut self, base: u32) -> Option<i64> {
        let mut value: i64 = 0;
        let mut overflow = false;
        while let Some(c) = self.peek() {
            if let Some(d) = c.to_digit(base) {
                match value.checked_mul(i64::from(base)).and_then(|v| v.checked_add(i64::from(d))) {
                    Some(v) => value = v,
                    None => overflow = true,
                }
            } else if c != '_' || !self.peek_second().is_some_and(|c| c.is_digit(base)) {
                break;
            }
            self.bump();
        }
        (!overflow).then_some(value)
    }

    /// A quoted string, atom or charlist; the opening quote is next.
    fn quoted(&mut self, quote: char, what: &'static str) -> Result<String, TermError> {
        let start = self.here();
        self.bump();
        let mut out = String::new();
        loop {
            let at = self.here();
            let Some(c) = self.bump() else {
                return Err(TermError::Unterminated { at: start, what });
            };
            match c {
                c if c == quote => return Ok(out),
                '\\' => self.escape(&mut out, at, start, what)?,
                '#' if self.dialect == Dialect::Elixir && self.peek() == Some('{') => {
                    return Err(TermError::Interpolation { at });
                }
                c => out.push(c),
            }
        }
    }

    /// The rest of an escape sequence whose backslash was at `at`.
    fn escape(&mut self, out: &mut String, at: Position, start: Position, what: &'static str) -> Result<(), TermError> {
        let bad = || TermError::InvalidEscape { at, what };
        let Some(c) = self.bump() else {
            return Err(TermError::Unterminated { at: start, what });
        };
        let code = match (self.dialect, c) {
            (_, 'n') => 0x0a,
            (_, 't') => 0x09,
            (_, 'r') => 0x0d,
            (_, 's') => 0x20,
            (_, 'b') => 0x08,
            (_, 'd') => 0x7f,
            (_, 'e') => 0x1b,
            (_, 'f') => 0x0c,
            (_, 'v') => 0x0b,
            (Dialect::Elixir, 'a') => 0x07,
            (Dialect::Elixir, '0') => 0,
            (Dialect::Elixir, '\n') => return Ok(()),
            (Dialect::Elixir, 'u') => {
                if self.eat('{') {
                    self.hex_braced().ok_or_else(bad)?
                } else {
                    self.hex_digits(4, 4).ok_or_else(bad)?
                }
            }
            (_, 'x') => {
                if self.eat('{') {
                    self.hex_braced().ok_or_else(bad)?
                } else {
                    let min = if self.dialect == Dialect::Elixir { 1 } else { 2 };
                    self.hex_digits(min, 2).ok_or_else(bad)?
                }
            }
            (Dialect::Erlang, '0'..='7') => {
                let mut code = c.to_digit(8).unwrap_or_default();
                for _ in 0..2 {
                    match self.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            code = code * 8 + d;
                            self.bump();
                        }
                        None => break,
                    }
                }
                code
            }
            // Erlang itself takes any character and keeps its low five bits (`\^?` is 31); lock
            // files keep the caret notation of control characters (`\^?` is DEL).
            (Dialect::Erlang, '^') if self.literals == Literals::All => match self.bump() {
                Some(c) if c.is_ascii() => u32::from(c) & 0x1f,
                _ => return Err(bad()),
            },
            (Dialect::Erlang, '^') => match self.bump() {
                Some(c) if c.is_ascii_alphabetic() || "@[\\]^_".contains(c) => u32::from(c) & 0x1f,
                Some('?') => 0x7f,
                _ => return Err(bad()),
            },
            (_, other) => u32::from(other),
        };
        out.push(char::from_u32(code).ok_or_else(bad)?);
        Ok(())
    }

    /// `min..=max` hex digits.
    fn hex_digits(&mut self, min: usize, max: usize) -> Option<u32> {
        let mut value = 0u32;
        let mut count = 0;
        while count < max {
            let Some(d) = self.peek().and_then(|c| c.to_digit(16)) else {
                break;
            };
            value = value * 16 + d;
            count += 1;
            self.bump();
        }
        (count >= min).then_some(value)
    }

    /// 1 to 6 hex digits then `}` (the `{` was consumed).
    fn hex_braced(&mut self) -> Option<u32> {
        let value = self.hex_digits(1, 6)?;
        self.eat('}').then_some(value)
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

// ---------------------------------------------------------------------------------
// Parser
// ---------------------------------------------------------------------------------

/// Where keyword entries (`key: value`) inside a sequence go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeywordTail {
    /// In a list: each entry is an element, `[a: 1]` is `[{:a, 1}]`.
    Inline,
    /// In a tuple: the entries form one last list element, `{1, a: 2}` is `{1, [{:a, 2}]}`.
    Wrapped,
}

struct Parser<'t> {
    tokens: &'t [Token],
    pos: usize,
    end: Position,
    dialect: Dialect,
    literals: Literals,
}

impl<'t> Parser<'t> {
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }

    fn advance(&mut self) -> Option<&'t Token> {
        let token = self.tokens.get(self.pos)?;
        self.pos += 1;
        Some(token)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek().is_some_and(|t| t.tok == *tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn here(&self) -> Position {
        self.peek().map_or(self.end, |t| t.at)
    }

    fn unexpected(&self, expected: &'static str) -> TermError {
        TermError::Unexpected { at: self.here(), expected, found: describe_token(self.peek()) }
    }

    /// One term; `depth` is the number of enclosing containers.
    fn term(&mut self, depth: usize) -> Result<Term, TermError> {
        let Some(token) = self.peek() else {
            return Err(self.unexpected("a term"));
        };
        let at = token.at;
        let container = matches!(token.tok, Tok::LBrace | Tok::LBracket | Tok::MapOpen | Tok::BinOpen);
        if container && depth >= MAX_DEPTH {
            return Err(TermError::TooDeep { at, limit: MAX_DEPTH });
        }
        let value = match &token.tok {
            Tok::LBrace => {
                self.pos += 1;
                let (items, _) = self.sequence(&Tok::RBrace, "`,` or `}`", depth, KeywordTail::Wrapped)?;
                Value::Tuple(items)
            }
            Tok::LBracket => {
                self.pos += 1;
                match self.sequence(&Tok::RBracket, "`,` or `]`", depth, KeywordTail::Inline)? {
                    (items, None) => Value::List(items),
                    (items, Some(tail)) => Value::ImproperList(items, Box::new(tail)),
                }
            }
            Tok::MapOpen => {
                self.pos += 1;
                Value::Map(self.map(depth)?)
            }
            Tok::BinOpen => {
                self.pos += 1;
                Value::Binary(self.binary(at)?)
            }
            Tok::Atom(atom) => {
                self.pos += 1;
                Value::Atom(atom.clone())
            }
            Tok::Int(n) => {
                self.pos += 1;
                Value::Int(*n)
            }
            Tok::Float(x) => {
                self.pos += 1;
                Value::Float(*x)
            }
            Tok::Str(text) => {
                self.pos += 1;
                let mut text = text.clone();
                // Erlang concatenates adjacent string literals.
                while self.dialect == Dialect::Erlang {
                    match self.peek() {
                        Some(Token { tok: Tok::Str(more), .. }) => {
                            text.push_str(more);
                            self.pos += 1;
                        }
                        _ => break,
                    }
                }
                Value::Str(text)
            }
            Tok::Ident(name)
                if self.dialect == Dialect::Elixir && matches!(name.as_str(), "true" | "false" | "nil") =>
            {
                self.pos += 1;
                Value::Atom(name.clone())
            }
            _ => return Err(self.unexpected("a term")),
        };
        Ok(Term { value, at })
    }

    /// Elements up to `close` (the opener was consumed); trailing commas are accepted. In a
    /// list, `| Tail ]` after an element ends it with a tail (only [`Tok::Bar`] can start one,
    /// and the tokenizer makes that only under [`Literals::All`]).
    fn sequence(
        &mut self,
        close: &Tok,
        expected: &'static str,
        depth: usize,
        tail: KeywordTail,
    ) -> Result<(Vec<Term>, Option<Term>), TermError> {
        let mut items = Vec::new();
        let mut keywords: Option<(Position, Vec<Term>)> = None;
        let mut list_tail = None;
        loop {
            if self.eat(close) {
                break;
            }
            if let Some(Token { tok: Tok::Key(key), at }) = self.peek() {
                self.pos += 1;
                let value = self.term(depth + 1)?;
                let key = Term { value: Value::Atom(key.clone()), at: *at };
                let pair = Term { value: Value::Tuple(vec![key, value]), at: *at };
                keywords.get_or_insert_with(|| (*at, Vec::new())).1.push(pair);
            } else if keywords.is_some() {
                return Err(self.unexpected("a `key: value` entry (keyword entries come last)"));
            } else {
                items.push(self.term(depth + 1)?);
            }
            if self.eat(&Tok::Comma) {
                continue;
            }
            if self.eat(close) {
                break;
            }
            if *close == Tok::RBracket && keywords.is_none() && self.eat(&Tok::Bar) {
                list_tail = Some(self.term(depth + 1)?);
                if !self.eat(close) {
                    return Err(self.unexpected("`]`"));
                }
                break;
            }
            return Err(self.unexpected(expected));
        }
        if let Some((at, pairs)) = keywords {
            match tail {
                KeywordTail::Inline => items.extend(pairs),
                KeywordTail::Wrapped => items.push(Term { value: Value::List(pairs), at }),
            }
        }
        Ok((items, list_tail))
    }

    /// Map entries up to `}` (the `%{` or `#{` was consumed).
    fn map(&mut self, depth: usize) -> Result<Vec<(Term, Term)>, TermError> {
        let mut entries = Vec::new();
        loop {
            if self.eat(&Tok::RBrace) {
                break;
            }
            let entry = if let Some(Token { tok: Tok::Key(key), at }) = self.peek() {
                self.pos += 1;
                let key = Term { value: Value::Atom(key.clone()), at: *at };
                (key, self.term(depth + 1)?)
            } else {
                let key = self.term(depth + 1)?;
                if !self.eat(&Tok::Arrow) {
                    return Err(self.unexpected("`=>`"));
                }
                (key, self.term(depth + 1)?)
            };
            entries.push(entry);
            if self.eat(&Tok::Comma) {
                continue;
            }
            if self.eat(&Tok::RBrace) {
                break;
            }
            return Err(self.unexpected("`,` or `}`"));
        }
        Ok(entries)
    }

    /// Erlang binary segments up to `>>` (the `<<` at `open` was consumed): strings and byte
    /// values, optionally typed `/utf8`. Under [`Literals::Lock`] the bytes must be UTF-8.
    fn binary(&mut self, open: Position) -> Result<Vec<u8>, TermError> {
        let mut bytes = Vec::new();
        loop {
            if self.eat(&Tok::BinClose) {
                break;
            }
            let segment = match self.peek() {
                Some(Token { tok: Tok::Str(text), at }) => (Some(text.clone()), 0, *at),
                Some(Token { tok: Tok::Int(n), at }) => (None, *n, *at),
                _ => return Err(self.unexpected("a string or integer segment")),
            };
            self.pos += 1;
            let segment = match segment {
                // Erlang concatenates adjacent strings here too.
                (Some(mut text), n, at) if self.literals == Literals::All => {
                    while let Some(Token { tok: Tok::Str(more), .. }) = self.peek() {
                        text.push_str(more);
                        self.pos += 1;
                    }
                    (Some(text), n, at)
                }
                other => other,
            };
            let utf8 = if self.eat(&Tok::Slash) {
                match self.advance() {
                    Some(Token { tok: Tok::Atom(t), .. }) if t == "utf8" => true,
                    _ => {
                        self.pos -= 1;
                        return Err(self.unexpected("the segment type `utf8`"));
                    }
                }
            } else {
                false
            };
            let (text, value, at) = segment;
            let out_of_range = || TermError::SegmentOutOfRange { at };
            let codes: Vec<u32> = match &text {
                Some(text) => text.chars().map(u32::from).collect(),
                None => vec![u32::try_from(value).map_err(|_| out_of_range())?],
            };
            for code in codes {
                if utf8 {
                    let c = char::from_u32(code).ok_or_else(out_of_range)?;
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                } else {
                    bytes.push(u8::try_from(code).map_err(|_| out_of_range())?);
                }
            }
            if self.eat(&Tok::Comma) {
                continue;
            }
            if self.eat(&Tok::BinClose) {
                break;
            }
            return Err(self.unexpected("`,` or `>>`"));
        }
        if self.literals == Literals::Lock && std::str::from_utf8(&bytes).is_err() {
            return Err(TermError::NotUtf8 { at: open });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Result<Vec<Term>, TermError> {
        parse_erlang(text, Literals::All)
    }

    fn atom(name: &str) -> Value {
        Value::Atom(name.into())
    }

    fn values(items: &[Term]) -> Vec<&Value> {
        items.iter().map(|t| &t.value).collect()
    }

    #[test]
    fn the_term_parser_reads_what_hex_writes_and_refuses_the_rest() {
        let terms = all(
            "{<<\"requirements\">>,\n #{<<\"plug\">> => #{<<\"app\">> => <<\"plug\">>,<<\"optional\">> => false}}}.\n\
             {<<\"links\">>,[{<<\"GitHub\">>,<<\"https://x\">>}]}.\n\
             {n, -12, 16#ff, 1.5e3, $a, $\\n, 'quoted atom', [a|b], \"\\x41\\x{42}\\101\\^A\\s\"}.",
        )
        .unwrap();
        assert_eq!(terms.len(), 3);
        let Value::Tuple(items) = &terms[2].value else { panic!() };
        assert_eq!(items[1].value, Value::Int(-12));
        assert_eq!(items[2].value, Value::Int(255));
        assert_eq!(items[3].value, Value::Float(1500.0));
        assert_eq!(items[4].value, Value::Int(97));
        assert_eq!(items[5].value, Value::Int(10));
        assert_eq!(items[6].value, atom("quoted atom"));
        let Value::ImproperList(elements, tail) = &items[7].value else { panic!("{:?}", items[7]) };
        assert_eq!((values(elements), &tail.value), (vec![&atom("a")], &atom("b")));
        assert_eq!(items[8].value, Value::Str("ABA\u{1} ".into()));
        let Value::Tuple(pair) = &terms[0].value else { panic!() };
        assert!(matches!(&pair[1].value, Value::Map(entries) if entries.len() == 1));
        for bad in [
            "{a,b}",
            "{a,b}.x",
            "{a,,b}.",
            "<<\"x\">",
            "<<256>>.",
            "<<\"\u{101}\">>.",
            "\"unterminated.",
            "Var.",
            "#{a}.",
            "99999999999999999999.",
            "\"\\x{110000}\".",
            "1#0.",
            "{a.",
        ] {
            assert!(all(bad).is_err(), "{bad:?}");
        }
        let deep = format!("{}{}.", "[".repeat(10_000), "]".repeat(10_000));
        assert!(all(&deep).is_err(), "nesting is limited");
        let fine = format!("{}{}.", "{".repeat(60), "}".repeat(60));
        assert!(all(&fine).is_ok());
    }

    #[test]
    fn every_printed_literal_reads_under_all_and_not_under_lock() {
        let cases: [(&str, Value, &str); 7] = [
            ("1.5.", Value::Float(1.5), "line 1, column 1: expected an integer, found a float"),
            ("-0.25e-2.", Value::Float(-0.0025), "line 1, column 1: expected an integer, found a float"),
            ("1_0.0_1E+1.", Value::Float(100.1), "line 1, column 1: expected an integer, found a float"),
            ("$\\^Z.", Value::Int(26), "line 1, column 1: unexpected character '$'"),
            ("$ .", Value::Int(32), "line 1, column 1: unexpected character '$'"),
            ("<<\"\\374\">>.", Value::Binary(vec![0xfc]), "line 1, column 1: binary is not valid UTF-8"),
            ("<<$a, 1>>.", Value::Binary(vec![97, 1]), "line 1, column 3: unexpected character '$'"),
        ];
        for (text, value, lock_error) in cases {
            let read = all(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(values(&read), [&value], "{text:?}");
            assert_eq!(parse_erlang(text, Literals::Lock).unwrap_err().to_string(), lock_error, "{text:?}");
        }
        let read = all("[1, 2 | [3]].").unwrap();
        let Value::ImproperList(items, tail) = &read[0].value else { panic!("{read:?}") };
        assert_eq!(values(items), [&Value::Int(1), &Value::Int(2)]);
        assert_eq!(tail.value, Value::List(vec![Term { value: Value::Int(3), at: Position { line: 1, column: 10 } }]));
        assert_eq!(
            parse_erlang("[1, 2 | [3]].", Literals::Lock).unwrap_err().to_string(),
            "line 1, column 7: unexpected character '|'"
        );
        // A float needs digits after the point, and an exponent digits after the `e`.
        assert_eq!(all("{1.5e, 2}.").unwrap_err().to_string(), "line 1, column 5: expected `,` or `}`, found atom `e`");
        assert_eq!(all("{1.}.").unwrap_err().to_string(), "line 1, column 3: expected `,` or `}`, found `.`");
    }

    #[test]
    fn all_follows_erlang_where_lock_files_are_narrower() {
        let cases = [
            ("# % comment\n {a => 1}.", "line 1, column 1: unexpected character '#'"),
            ("<<\"a\" \"b\", 99>>.", "line 1, column 7: expected `,` or `>>`, found string \"b\""),
            ("\"\\^?\\^1\".", "line 1, column 5: invalid escape sequence in string"),
        ];
        let expected = [
            Value::Map(vec![(
                Term { value: atom("a"), at: Position { line: 2, column: 3 } },
                Term { value: Value::Int(1), at: Position { line: 2, column: 8 } },
            )]),
            Value::Binary(b"abc".to_vec()),
            Value::Str("\u{1f}\u{11}".into()),
        ];
        for ((text, lock_error), value) in cases.into_iter().zip(expected) {
            assert_eq!(values(&all(text).unwrap()), [&value], "{text:?}");
            assert_eq!(parse_erlang(text, Literals::Lock).unwrap_err().to_string(), lock_error, "{text:?}");
        }
        assert_eq!(parse_erlang("\"\\^?\".", Literals::Lock).unwrap()[0].value, Value::Str("\u{7f}".into()));
        assert_eq!(all("# x.").unwrap_err().to_string(), "line 1, column 1: unexpected character '#'");
    }

    #[test]
    fn improper_lists_need_an_element_before_the_bar_and_one_tail() {
        for (text, message) in [
            ("[|a].", "line 1, column 2: expected a term, found `|`"),
            ("[a,|b].", "line 1, column 4: expected a term, found `|`"),
            ("[a|b|c].", "line 1, column 5: expected `]`, found `|`"),
            ("[a|].", "line 1, column 4: expected a term, found `]`"),
            ("{a|b}.", "line 1, column 3: expected `,` or `}`, found `|`"),
        ] {
            assert_eq!(all(text).unwrap_err().to_string(), message, "{text:?}");
        }
    }

    #[test]
    fn positions_count_lines_and_characters() {
        let terms = all("% header\n{é,\n  <<\"x\">>}.").unwrap();
        let Value::Tuple(items) = &terms[0].value else { panic!() };
        assert_eq!(terms[0].at, Position { line: 2, column: 1 });
        assert_eq!(items[1].at, Position { line: 3, column: 3 });
        assert_eq!(items[1].string(), Some("x"));
        assert_eq!(items[0].describe(), "atom `é`");
    }
}
