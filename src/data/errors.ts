/**
 * Errors about user-supplied data (datasets, archives, images, output files).
 *
 * The CLI prints `error: <message>` and exits with status 1, so every message is a
 * single line that names the file or URL, says what is wrong and what to do about it.
 */
export class DataError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(oneLine(message), options);
    this.name = 'DataError';
  }
}

/** Collapse newlines so a message always prints as one line. */
function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}
