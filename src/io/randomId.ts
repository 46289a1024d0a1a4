import {closeSync, openSync, readSync} from 'node:fs'

/**
 * Random names clonectl makes: temp-file suffixes, lock tokens and operation ids. Read from
 * /dev/urandom, a pool at a time, synchronously: node:crypto would be loaded for them, and it
 * cost every sync and restore ~1.5 ms at start (its module graph: ciphers, keys, x509) for a
 * few bytes a command. Uniqueness is what matters here, not secrecy; where /dev/urandom cannot
 * be read (no /dev in a sandbox), Web Crypto's generator serves.
 */
const POOL = 256
let pool: Buffer | undefined
let used = POOL

function take(n: number): Buffer {
  if (n > POOL) return fill(Buffer.allocUnsafe(n))
  if (!pool || used + n > POOL) {
    pool = fill(pool ?? Buffer.allocUnsafe(POOL))
    used = 0
  }
  used += n
  // A copy: the pool's bytes are read again only after a refill.
  return Buffer.from(pool.subarray(used - n, used))
}

function fill(buf: Buffer): Buffer {
  try {
    const fd = openSync('/dev/urandom', 'r')
    try {
      for (let done = 0; done < buf.length; ) {
        const n = readSync(fd, buf, done, buf.length - done, null)
        if (n <= 0) throw new Error('/dev/urandom gave no bytes')
        done += n
      }
    } finally {
      closeSync(fd)
    }
    return buf
  } catch {
    // Web Crypto's global loads node:crypto on first use: only on this rare path.
    for (let at = 0; at < buf.length; at += 65536) globalThis.crypto.getRandomValues(buf.subarray(at, Math.min(buf.length, at + 65536)))
    return buf
  }
}

/** `bytes` random bytes as lower-case hex. */
export function randomHex(bytes: number): string {
  return take(bytes).toString('hex')
}

/** A random (version 4, RFC 9562) UUID: an operation's id. */
export function randomUuid(): string {
  const b = take(16)
  b[6] = (b[6] & 0x0f) | 0x40
  b[8] = (b[8] & 0x3f) | 0x80
  const h = b.toString('hex')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}
