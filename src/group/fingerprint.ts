import type {Fingerprint} from '../volume/Volume.js'

/**
 * True when a volume's fingerprint shows a change clonectl did not make. Block devices carry
 * only major:minor and size, so a change behind our back on a device cannot be seen
 * (documented in the README's safety notes).
 */
export function fingerprintsDiffer(recorded: Fingerprint, now: Fingerprint, opts: {ignoreTimes?: boolean} = {}): boolean {
  if (recorded.kind !== now.kind || recorded.size !== now.size) return true
  if (recorded.majorMinor !== now.majorMinor || recorded.uri !== now.uri) return true
  if (recorded.dev !== now.dev || recorded.ino !== now.ino) return true
  if (opts.ignoreTimes) return false
  return recorded.mtimeMs !== now.mtimeMs || recorded.ctimeMs !== now.ctimeMs
}
