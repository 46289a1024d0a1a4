import {stat} from 'node:fs/promises'
import {NotFoundError, RefusedError} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {loopBackingFile, majorMinor} from './blockDevice.js'

export interface VolumeIdentity {
  realPath: string
  kind: 'file' | 'block' | 'other'
  dev?: number
  ino?: number
  majorMinor?: string
  /** A loop device's backing file. */
  backing?: {dev: number; ino: number; path: string}
}

/** What a path really is: its file (dev, inode), or its device and a loop device's backing file. */
export async function resolveIdentity(fs: DurableFs, path: string): Promise<VolumeIdentity> {
  let real: string
  try {
    real = await fs.realpath(path)
  } catch {
    throw new NotFoundError(`${path} does not exist`, 'create it, or pass --create to make a sparse image')
  }
  const s = await fs.stat(real)
  if (s.isFile) return {realPath: real, kind: 'file', dev: s.dev, ino: s.ino}
  if (s.isBlockDevice) {
    const mm = majorMinor(s.rdev)
    const id: VolumeIdentity = {realPath: real, kind: 'block', majorMinor: mm}
    const backing = await loopBackingFile(mm)
    if (backing) {
      const b = await stat(backing).catch(() => undefined)
      if (b) id.backing = {dev: b.dev, ino: b.ino, path: backing}
    }
    return id
  }
  return {realPath: real, kind: 'other'}
}

/** The same storage: same file (hard link, symlink), same device, or a loop device over the other (or both over one file). */
export function sameVolume(a: VolumeIdentity, b: VolumeIdentity): boolean {
  const fileOf = (v: VolumeIdentity): {dev: number; ino: number} | undefined => (v.kind === 'file' ? {dev: v.dev!, ino: v.ino!} : v.backing)
  if (a.kind === 'block' && b.kind === 'block' && a.majorMinor === b.majorMinor) return true
  const fa = fileOf(a)
  const fb = fileOf(b)
  return Boolean(fa && fb && fa.dev === fb.dev && fa.ino === fb.ino)
}

/**
 * Refuse a clone that is the source under another name or a volume already used by a group.
 * Both paths are named in the message. Waits.
 */
export async function checkCloneCandidate(fs: DurableFs, sourcePath: string, clonePath: string, used: Array<{group: string; clone: string; path: string}>): Promise<void> {
  const clone = await resolveIdentity(fs, clonePath)
  if (clone.kind === 'other') throw new RefusedError(`${clonePath} is neither a regular file nor a block device`)
  const source = await resolveIdentity(fs, sourcePath)
  if (sameVolume(source, clone))
    throw new RefusedError(`clone ${clonePath} is the source ${sourcePath} under another name${clone.backing ? ` (loop device over ${clone.backing.path})` : ''}`, 'name a different volume for the clone')
  for (const u of used) {
    // eslint-disable-next-line no-await-in-loop
    const other = await resolveIdentity(fs, u.path).catch(() => undefined)
    if (other && sameVolume(other, clone))
      throw new RefusedError(`${clonePath} is already used by group ${u.group} (${u.clone === '(source)' ? 'as its source' : `as clone ${u.clone}`}, ${u.path})`, 'a volume belongs to one group only; name a different volume')
  }
}

export function checkCloneSize(sourcePath: string, sourceSize: number, clonePath: string, cloneSize: number): void {
  if (cloneSize < sourceSize)
    throw new RefusedError(`clone ${clonePath} (${cloneSize} bytes) is smaller than the source ${sourcePath} (${sourceSize} bytes)`, `use a volume of at least ${sourceSize} bytes, or pass --create with a new path`)
}
