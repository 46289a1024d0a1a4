/**
 * Refusal checks before a volume joins a group: a clone must not be the source under another
 * name (hard link, symlink, the same device, a loop device over the source file, a partition
 * of the source disk), nor a volume another group already uses, nor smaller than the source.
 *
 * Design: every volume is reduced to the byte ranges it occupies on the things that really
 * hold data ("spans"): a file is all of its inode; a block device is all of itself, plus,
 * for a partition, a range of its whole disk, plus, for a loop device, a range of its backing
 * file or device (recursively). Two volumes are the same storage when any two of their spans
 * on the same thing overlap. A span is conservative (a device whose size cannot be read
 * reaches to infinity), so an unknown answer refuses rather than allows.
 *
 * A file also lies somewhere inside the block device holding its file system (st_dev), so an
 * image file on a file system that lives on the source (a mounted loop device over the
 * source file, a partition of the source disk) is refused too. Those spans are "weak": two
 * files on one file system do not overlap merely because they share a device.
 */
import {ClonectlError, NotFoundError, RefusedError, UsageError, errnoOf} from '../errors/errors.js'
import type {DurableFs} from '../io/DurableFs.js'
import {devPathOf, isBlockDeviceNumber, loopBackingFile, loopOffset, majorMinor, partitionOf, sysfsSize} from './blockDevice.js'
import {ioError} from './FileVolume.js'
import {parseNbdUri} from '../nbd/nbdUri.js'
import {isNbdUri} from './openVolume.js'

export interface VolumeIdentity {
  /** The canonical path (symlinks resolved), or the URI of an NBD remote. */
  realPath: string
  kind: 'file' | 'block' | 'nbd' | 'other'
  /** Files: st_dev and inode (the same for every hard link and symlink). */
  dev?: number
  ino?: number
  /** Block devices: "major:minor". */
  majorMinor?: string
  /** NBD remotes: where the export is, normalized ("unix /real/sock export", "tcp host:port export"). */
  nbdKey?: string
  /** Block devices: size in bytes (from sysfs). */
  size?: number
  /** A loop device (or a partition of one) whose backing file is a regular file. */
  backingFile?: {dev: number; ino: number; path: string}
  /**
   * What a block device's bytes live on, and where they start there: a partition's whole
   * disk, or a loop device's backing file or device (losetup --offset).
   */
  within?: {identity: VolumeIdentity; offset: number; relation: 'partition' | 'loop'}
  /** Files: the block device holding the file system the file is on, when there is one. */
  hostDevice?: VolumeIdentity
}

/** A byte range [start, end) on one thing that holds data ("file DEV:INO", "block MAJ:MIN"). */
interface Span {
  on: string
  start: number
  end: number
  /** Somewhere inside [start, end), not all of it: a file on a file system on that device. */
  weak?: boolean
}

const MAX_DEPTH = 8

/**
 * What a path really is: its file (dev, inode), or its device, with a partition's disk and a
 * loop device's backing file. Missing → NotFoundError naming the path. Waits.
 */
export async function resolveIdentity(fs: DurableFs, path: string): Promise<VolumeIdentity> {
  return resolveAt(fs, path, 0)
}

async function resolveAt(fs: DurableFs, path: string, depth: number): Promise<VolumeIdentity> {
  if (isNbdUri(path)) return {realPath: path, kind: 'nbd', nbdKey: await nbdKey(fs, path)}
  let real: string
  try {
    real = await fs.realpath(path)
  } catch (error) {
    const errno = errnoOf(error)
    if (errno === 'ENOENT' || errno === 'ENOTDIR') throw new NotFoundError(`${path} does not exist`, 'create it, or pass --create to make a sparse image')
    throw ioError(path, 'resolving', error)
  }
  let s
  try {
    s = await fs.stat(real)
  } catch (error) {
    throw ioError(real, 'examining', error)
  }
  if (s.isFile) {
    const id: VolumeIdentity = {realPath: real, kind: 'file', dev: s.dev, ino: s.ino}
    const host = majorMinor(s.dev)
    // tmpfs, btrfs, overlayfs, NFS have anonymous device numbers (major 0): no block device.
    if (depth < MAX_DEPTH && (await isBlockDeviceNumber(host))) id.hostDevice = await deviceIdentity(fs, host, await devPathOf(host), depth + 1)
    return id
  }
  if (!s.isBlockDevice) return {realPath: real, kind: 'other', dev: s.dev, ino: s.ino}
  return deviceIdentity(fs, majorMinor(s.rdev), real, depth)
}

/** A block device by number: its size, a partition's disk, a loop device's backing. */
async function deviceIdentity(fs: DurableFs, mm: string, real: string, depth: number): Promise<VolumeIdentity> {
  const id: VolumeIdentity = {realPath: real, kind: 'block', majorMinor: mm}
  id.size = await sysfsSize(mm).catch(() => undefined)
  if (depth >= MAX_DEPTH) return id
  const part = await partitionOf(mm)
  if (part) {
    const disk = await resolveAt(fs, part.devPath, depth + 1).catch(() => undefined)
    // The disk's device node may be missing (no udev); its number still identifies it.
    id.within = {identity: disk?.majorMinor === part.majorMinor ? disk : {realPath: part.devPath, kind: 'block', majorMinor: part.majorMinor}, offset: part.start, relation: 'partition'}
    if (disk?.backingFile) id.backingFile = disk.backingFile
    return id
  }
  const backing = await loopBackingFile(mm)
  if (backing) {
    const b = await resolveAt(fs, backing, depth + 1).catch((error: unknown) => {
      if (error instanceof ClonectlError) return undefined
      throw error
    })
    if (b && (b.kind === 'file' || b.kind === 'block')) {
      id.within = {identity: b, offset: await loopOffset(mm), relation: 'loop'}
      if (b.kind === 'file' && b.dev !== undefined && b.ino !== undefined) id.backingFile = {dev: b.dev, ino: b.ino, path: b.realPath}
      else if (b.backingFile) id.backingFile = b.backingFile
    }
  }
  return id
}

function spans(v: VolumeIdentity): Span[] {
  if (v.kind === 'nbd') return [{on: `nbd ${v.nbdKey ?? v.realPath}`, start: 0, end: Infinity}]
  if (v.kind === 'file' || v.kind === 'other') {
    const own: Span = v.dev !== undefined && v.ino !== undefined ? {on: `file ${v.dev}:${v.ino}`, start: 0, end: Infinity} : {on: `path ${v.realPath}`, start: 0, end: Infinity}
    return v.hostDevice ? [own, ...spans(v.hostDevice).map((h) => ({...h, weak: true}))] : [own]
  }
  const own: Span[] = [{on: `block ${v.majorMinor ?? v.realPath}`, start: 0, end: Infinity}]
  if (!v.within) return own
  // Byte 0 of this device is byte `offset` of what it lies within.
  const {identity, offset} = v.within
  const size = v.size ?? Infinity
  return [...own, ...spans(identity).map((s) => ({...s, start: s.start + offset, end: s.start + offset + size}))]
}

type Relation = {rel: 'same'} | {rel: 'overlap'; insideA: boolean; insideB: boolean}

/** How b relates to a, if they share storage: the same file or device, or overlapping (and whether through a file system on it). */
function relation(a: VolumeIdentity, b: VolumeIdentity): Relation | undefined {
  const sa = spans(a)
  const sb = spans(b)
  if (sa[0].on === sb[0].on) return {rel: 'same'}
  for (const x of sa)
    for (const y of sb) if (x.on === y.on && !(x.weak && y.weak) && x.start < y.end && y.start < x.end) return {rel: 'overlap', insideA: Boolean(x.weak), insideB: Boolean(y.weak)}
  return undefined
}

/**
 * The same storage: the same file (hard link, symlink), the same device, a loop device over
 * the other (or both over one file, with overlapping offsets), a partition of the other.
 * Pure; does not wait.
 */
export function sameVolume(a: VolumeIdentity, b: VolumeIdentity): boolean {
  return relation(a, b) !== undefined
}

/** " a partition of /dev/loop3, which is a loop device over /srv/src.img" */
function chain(v: VolumeIdentity): string {
  if (!v.within) return ''
  const {identity, relation: r} = v.within
  return ` ${r === 'loop' ? 'a loop device over' : 'a partition of'} ${identity.realPath}${identity.within ? `, which is${chain(identity)}` : ''}`
}

/** "/dev/loop3 is a loop device over /srv/src.img", "/mnt/c.img is on a file system on /dev/loop3, which is …" */
function explain(v: VolumeIdentity): string {
  if (v.hostDevice) return `${v.realPath} is on a file system on ${v.hostDevice.realPath}${v.hostDevice.within ? `, which is${chain(v.hostDevice)}` : ''}`
  return `${v.realPath} is${chain(v)}`
}

function why(a: VolumeIdentity, b: VolumeIdentity, r: Relation): string {
  if (r.rel === 'same') return a.kind === 'block' ? `the same device ${a.majorMinor}` : 'the same file: a hard link, a symlink or the same path'
  const told = (v: VolumeIdentity, inside: boolean): boolean => Boolean(v.within) || (inside && Boolean(v.hostDevice))
  const parts = [told(a, r.insideA) ? explain(a) : '', told(b, r.insideB) ? explain(b) : '']
  return parts.filter(Boolean).join('; ')
}

/**
 * Refuse a clone that is the source under another name, or overlaps it, or a volume a group
 * already uses (as its source or a clone). Messages name both paths. A missing clone or
 * source → NotFoundError naming it. Waits.
 */
export async function checkCloneCandidate(fs: DurableFs, sourcePath: string, clonePath: string, usedPaths: Array<{group: string; clone: string; path: string}>, role: 'clone' | 'drill target' = 'clone'): Promise<void> {
  let clone: VolumeIdentity
  try {
    clone = await resolveIdentity(fs, clonePath)
  } catch (error) {
    if (error instanceof NotFoundError) throw new NotFoundError(`${role} ${clonePath} does not exist`, error.fix)
    throw error
  }
  // A bad path on the command line, as for the source (openVolume): exit 2, not 5.
  if (clone.kind === 'other') throw new UsageError(`${role} ${clonePath} is ${(await isDirectory(fs, clonePath)) ? 'a directory' : 'neither a regular file nor a block device'}, not a volume`, `name an image file or a block device for the ${role}`)
  let source: VolumeIdentity
  try {
    source = await resolveIdentity(fs, sourcePath)
  } catch (error) {
    if (error instanceof NotFoundError) throw new NotFoundError(`source ${sourcePath} does not exist`, 'check the group\'s source path (clonectl status GROUP)')
    throw error
  }
  const r = relation(source, clone)
  if (r)
    throw new RefusedError(
      `${role} ${clonePath} ${r.rel === 'same' ? 'is the source' : 'overlaps the source'} ${sourcePath}${r.rel === 'same' ? ' under another name' : ''} (${why(source, clone, r)})`,
      `name a different volume for the ${role}`,
    )
  for (const u of usedPaths) {
    // One at a time: a handful of groups.
    const other = await resolveIdentity(fs, u.path).catch((error: unknown) => {
      if (error instanceof NotFoundError) return undefined // a missing volume overlaps nothing
      throw error
    })
    const ru = other && relation(other, clone)
    if (ru)
      throw new RefusedError(
        `${role} ${clonePath} ${ru.rel === 'same' ? 'is already used by' : 'overlaps a volume of'} group ${u.group} (${u.clone === '(source)' ? 'as its source' : `as clone ${u.clone}`}, ${u.path}${ru.rel === 'overlap' && other ? `: ${why(other, clone, ru)}` : ''})`,
        'a volume belongs to one group only; name a different volume',
      )
  }
}

/** FileStat has no isDirectory; a directory is what readdir accepts. */
async function isDirectory(fs: DurableFs, path: string): Promise<boolean> {
  return fs.readdir(path).then(
    () => true,
    () => false,
  )
}

/** Refuse a clone smaller than the source, naming both sizes in bytes. Does not wait. */
export function checkCloneSize(sourcePath: string, sourceSize: number, clonePath: string, cloneSize: number): void {
  if (cloneSize < sourceSize)
    throw new RefusedError(
      `clone ${clonePath} (${cloneSize} bytes) is smaller than the source ${sourcePath} (${sourceSize} bytes)`,
      `use a volume of at least ${sourceSize} bytes, or pass --create with a new path`,
    )
}

/**
 * One export reached by two spellings of its URI is one volume: compare where it is (the
 * socket's real path, or the host lower-cased and the port) and the export name, not the
 * text. Two host names for one machine cannot be told apart here. Waits (realpath).
 */
async function nbdKey(fs: DurableFs, uri: string): Promise<string> {
  const u = parseNbdUri(uri)
  const t = u.transport
  if (t.kind === 'unix') {
    const real = await fs.realpath(t.path).catch(() => t.path)
    return `unix ${real} ${JSON.stringify(u.exportName)}`
  }
  const host = t.host.toLowerCase() === 'localhost' ? '127.0.0.1' : t.host.toLowerCase()
  return `tcp ${host}:${t.port} ${JSON.stringify(u.exportName)}`
}

/** One volume a group uses: its source ('(source)') or a clone, and the path recorded for it. */
export interface RecordedUse {
  group: string
  clone: string
  path: string
}

/** Where a group's own volumes collide, found at open. */
export interface VolumeConflicts {
  /** The source is another volume of this group or of any group: nothing may be opened. */
  source?: RefusedError
  /** Clones that are another volume (a clone of this group before them, or any other group's): refused by name. */
  clones: Map<string, RefusedError>
}

function useName(u: RecordedUse): string {
  return u.clone === '(source)' ? `the source of group ${u.group} (${u.path})` : `clone ${u.clone} of group ${u.group} (${u.path})`
}

/**
 * The rule "a volume is never the same as another volume of any group", checked at every
 * open of a group's volumes, not only at `clone add` (group.json may have been edited, or
 * two adds raced before there was a lock): the group's own volumes pairwise, and each
 * against every other group's recorded volumes. Each conflict names both uses and the fix
 * (`groupFile` to correct, or `clone remove`). Volumes that cannot be resolved (missing)
 * overlap nothing here; opening them reports that. Never opens a volume: realpath, stat
 * and sysfs only, so an open stays cheap. Waits.
 */
export async function findVolumeConflicts(fs: DurableFs, own: RecordedUse[], others: RecordedUse[], groupFile: string): Promise<VolumeConflicts> {
  const cache = new Map<string, Promise<VolumeIdentity | undefined>>()
  const identity = (path: string): Promise<VolumeIdentity | undefined> => {
    let p = cache.get(path)
    if (!p) {
      // Unknown (missing, unreadable) is left to the open itself, which names the error.
      p = resolveIdentity(fs, path).catch((error: unknown) => {
        if (error instanceof ClonectlError) return undefined
        throw error
      })
      cache.set(path, p)
    }
    return p
  }
  const out: VolumeConflicts = {clones: new Map()}
  const seen: Array<{use: RecordedUse; id: VolumeIdentity}> = []
  for (const use of own) {
    const id = await identity(use.path)
    if (!id) continue
    let hit: {other: RecordedUse; r: Relation; otherId: VolumeIdentity} | undefined
    for (const s of seen) {
      const r = relation(s.id, id)
      if (r) {
        hit = {other: s.use, r, otherId: s.id}
        break
      }
    }
    for (const o of hit ? [] : others) {
      const otherId = await identity(o.path)
      const r = otherId && relation(otherId, id)
      if (r) {
        hit = {other: o, r, otherId}
        break
      }
    }
    if (!hit) {
      seen.push({use, id})
      continue
    }
    const detail = hit.r.rel === 'overlap' ? `: ${why(hit.otherId, id, hit.r)}` : ''
    const sourceInvolved = use.clone === '(source)' || (hit.other.clone === '(source)' && hit.other.group === use.group)
    const message = `${useName(use)} ${hit.r.rel === 'same' ? 'is the same volume as' : 'overlaps'} ${useName(hit.other)}${detail}; a volume is never two volumes of any group`
    if (sourceInvolved) {
      out.source ??= new RefusedError(message, `correct the paths in ${groupFile}, or destroy the group's state (\`clonectl group destroy ${use.group} --force\`; no volume is touched)`)
      continue
    }
    out.clones.set(use.clone, new RefusedError(message, `correct the clone's path in ${groupFile}, or remove the clone: \`clonectl clone remove ${use.group} ${use.clone}\``))
  }
  return out
}
