//! Tracing output through the anonymizer: every formatted log line is scrubbed
//! before it reaches stderr (or any other writer), so personal data in a message,
//! an error or a field never lands in a log file.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// A [`MakeWriter`] that scrubs each event before passing it to `inner`.
#[derive(Debug, Clone)]
pub struct Scrubbing<M> {
    inner: M,
}

impl<M> Scrubbing<M> {
    /// Wraps a writer factory (e.g. `std::io::stderr`).
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

/// Buffers one event and writes it scrubbed when dropped.
pub struct ScrubbingWriter<W: Write> {
    buf: Vec<u8>,
    inner: W,
}

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buf);
        let clean = super::global().scrub_log(&text);
        self.buf.clear();
        self.inner.write_all(clean.as_bytes())?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for ScrubbingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a, M> MakeWriter<'a> for Scrubbing<M>
where
    M: MakeWriter<'a>,
{
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter {
            buf: Vec::with_capacity(256),
            inner: self.inner.make_writer(),
        }
    }
}
