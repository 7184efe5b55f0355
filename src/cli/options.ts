// Strict parsers for command-line values: each throws commander's InvalidArgumentError with a
// short reason, which commander reports as one `error: ...` line (exit code 2 in main.ts).
import { InvalidArgumentError } from 'commander';

const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

function parseNumber(s: string): number {
  const t = s.trim();
  if (!NUMBER_RE.test(t)) throw new InvalidArgumentError('not a number.');
  const v = Number(t);
  if (!Number.isFinite(v)) throw new InvalidArgumentError('the number is too large.');
  return v;
}

export function positiveInt(s: string): number {
  const t = s.trim();
  if (!/^\+?\d+$/.test(t)) throw new InvalidArgumentError('expected a positive integer.');
  const v = Number(t);
  if (!Number.isSafeInteger(v) || v < 1) throw new InvalidArgumentError('expected a positive integer.');
  return v;
}

export function nonNegativeInt(s: string): number {
  const t = s.trim();
  if (!/^\+?\d+$/.test(t)) throw new InvalidArgumentError('expected a non-negative integer.');
  const v = Number(t);
  if (!Number.isSafeInteger(v)) throw new InvalidArgumentError('the integer is too large.');
  return v;
}

export function positiveNumber(s: string): number {
  const v = parseNumber(s);
  if (!(v > 0)) throw new InvalidArgumentError('expected a number > 0.');
  return v;
}

export function nonNegativeNumber(s: string): number {
  const v = parseNumber(s);
  if (!(v >= 0)) throw new InvalidArgumentError('expected a number >= 0.');
  return v;
}

/** A number in [0, 1). */
export function unitInterval(s: string): number {
  const v = parseNumber(s);
  if (!(v >= 0 && v < 1)) throw new InvalidArgumentError('expected a number in [0, 1).');
  return v;
}

/** A parser accepting one of `choices` (case-insensitive; '-', '_' and spaces ignored). */
export function oneOf(choices: () => readonly string[]): (s: string) => string {
  return (s: string) => {
    const n = s.toLowerCase().replace(/[-_ ]/g, '');
    const all = choices();
    if (!all.includes(n)) throw new InvalidArgumentError(`expected one of ${all.join(', ')}.`);
    return n;
  };
}
