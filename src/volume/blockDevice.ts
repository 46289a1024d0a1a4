/**
 * Block-device facts from sysfs and procfs, without native addons (no ioctl from Node):
 * a device's number from stat's rdev, its size, a loop device's backing file and offset, a
 * partition's whole disk, and whether a file system on it is mounted.
 *
 * These read kernel interfaces, not persistent state, so they use node:fs directly rather
 * than the DurableFs (nothing here is written, nothing needs a crash model).
 */
// The reads are synchronous calls behind the async interface, like NodeDurableFs's metadata
// reads: sysfs and procfs answer from kernel memory in a few µs, where each thread-pool round
// trip cost 0.3-1.5 ms on a loaded 2-core machine, and every open of a group checks each
// loop device's backing file (src/io/loopPolicy.ts has the figures). The device open of
// deviceBusy stays on the pool: opening a device can wait for it.
// fs.promises, read at each call: node:fs/promises loads on first use (see NodeDurableFs).
import {constants, promises as fsp, readdirSync, readFileSync, realpathSync, statSync} from 'node:fs'
import {basename, dirname} from 'node:path'
import {VolumeIoError, errnoOf} from '../errors/errors.js'

/**
 * "major:minor" of a device number, as glibc's gnu_dev_major/gnu_dev_minor compute it:
 *   major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~0xfff)
 *   minor = (dev & 0xff) | ((dev >> 12) & ~0xff)
 * rdev is a JS number (exact below 2^53), so the shifts past 31 bits are Math.floor
 * divisions; `>>> 0` keeps a 32-bit result unsigned.
 */
export function majorMinor(rdev: number): string {
  const major = ((Math.floor(rdev / 2 ** 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff)) >>> 0
  const minor = ((rdev % 256) | (Math.floor(rdev / 2 ** 12) & ~0xff)) >>> 0
  return `${major}:${minor}`
}

const sysDir = (mm: string): string => `/sys/dev/block/${mm}`

async function readSysfs(path: string): Promise<string | undefined> {
  try {
    return readFileSync(path, 'utf8').replace(/\n$/, '')
  } catch {
    return undefined
  }
}

/** A block device's size in bytes, from /sys/dev/block/MAJ:MIN/size (512-byte sectors). Waits. */
export async function sysfsSize(mm: string): Promise<number> {
  const file = `${sysDir(mm)}/size`
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (error) {
    throw new VolumeIoError(`cannot read the size of block device ${mm} from ${file} (${errnoOf(error) ?? String(error)})`, errnoOf(error), 'is /sys mounted? clonectl reads block device sizes from sysfs')
  }
  const sectors = Number(text.trim())
  if (!Number.isSafeInteger(sectors) || sectors < 0) throw new VolumeIoError(`${file} holds "${text.trim()}", not a sector count`, 'EINVAL')
  return sectors * 512
}

/** True when the kernel marks the device read-only (/sys/dev/block/MAJ:MIN/ro). Waits. */
export async function sysfsReadOnly(mm: string): Promise<boolean> {
  return (await readSysfs(`${sysDir(mm)}/ro`))?.trim() === '1'
}

/**
 * The backing file of a loop device (/sys/dev/block/MAJ:MIN/loop/backing_file), or undefined
 * for any other device, a loop device with nothing attached, or a backing file that has
 * been deleted (its path then names nothing, or something else). Waits.
 */
export async function loopBackingFile(mm: string): Promise<string | undefined> {
  const f = await readSysfs(`${sysDir(mm)}/loop/backing_file`)
  if (!f || f.endsWith(' (deleted)')) return undefined
  return f
}

/** A loop device's offset into its backing file in bytes (losetup --offset); 0 otherwise. Waits. */
export async function loopOffset(mm: string): Promise<number> {
  const n = Number((await readSysfs(`${sysDir(mm)}/loop/offset`))?.trim() ?? 0)
  return Number.isSafeInteger(n) ? n : 0
}

/**
 * For a partition: its whole disk (major:minor and /dev path) and the partition's first byte
 * on it; undefined for a whole device. Waits.
 */
export async function partitionOf(mm: string): Promise<{majorMinor: string; devPath: string; start: number} | undefined> {
  if ((await readSysfs(`${sysDir(mm)}/partition`)) === undefined) return undefined
  let dir: string
  try {
    dir = realpathSync(sysDir(mm))
  } catch {
    return undefined
  }
  const parent = dirname(dir)
  const parentMm = (await readSysfs(`${parent}/dev`))?.trim()
  const start = Number((await readSysfs(`${dir}/start`))?.trim())
  if (!parentMm || !Number.isSafeInteger(start)) return undefined
  // sysfs spells "/" in device names as "!" (cciss!c0d0 is /dev/cciss/c0d0).
  return {majorMinor: parentMm, devPath: `/dev/${basename(parent).replaceAll('!', '/')}`, start: start * 512}
}

/** True when major:minor is a block device the kernel knows (it has a /sys/dev/block entry). Waits. */
export async function isBlockDeviceNumber(mm: string): Promise<boolean> {
  return (await readSysfs(`${sysDir(mm)}/dev`)) !== undefined
}

/** The /dev path of a block device by number, from sysfs uevent's DEVNAME (/dev/block/MAJ:MIN if none). Waits. */
export async function devPathOf(mm: string): Promise<string> {
  const name = /^DEVNAME=(.+)$/m.exec((await readSysfs(`${sysDir(mm)}/uevent`)) ?? '')?.[1]
  return name ? `/dev/${name}` : `/dev/block/${mm}`
}

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

/** Where file systems on the device major:minor are mounted (from /proc/self/mountinfo). Waits. */
export async function mountPoints(mm: string): Promise<string[]> {
  let text: string
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8')
  } catch {
    return []
  }
  // Fields: mount ID, parent ID, major:minor, root, mount point, ...
  const points: string[] = []
  for (const line of text.split('\n')) {
    const f = line.split(' ')
    if (f[2] === mm && f[4] !== undefined) points.push(unescapeMountinfo(f[4]))
  }
  return points
}

/** True when a file system on the block device at devPath is mounted (by major:minor). Waits. */
export async function isMounted(devPath: string): Promise<boolean> {
  let s
  try {
    s = statSync(devPath)
  } catch {
    return false
  }
  if (!s.isBlockDevice()) return false
  return (await mountPoints(majorMinor(s.rdev))).length > 0
}

/**
 * The loop devices whose backing file is the file (dev, ino): a file that backs a loop device
 * counts as that device (a file system mounted from it lives in the file's bytes). From
 * /sys/block/loopN/loop/backing_file, stat'ed to compare the inode, so any name of the file
 * matches. Waits.
 */
export async function loopDevicesBackedBy(dev: number, ino: number): Promise<Array<{majorMinor: string; devPath: string}>> {
  let names: string[]
  try {
    names = readdirSync('/sys/block').filter((n) => /^loop\d+$/.test(n))
  } catch {
    return []
  }
  const out: Array<{majorMinor: string; devPath: string}> = []
  for (const n of names) {
    const backing = await readSysfs(`/sys/block/${n}/loop/backing_file`)
    if (!backing || backing.endsWith(' (deleted)')) continue
    let s
    try {
      s = statSync(backing)
    } catch {
      continue
    }
    if (s.dev !== dev || s.ino !== ino) continue
    const mm = (await readSysfs(`/sys/block/${n}/dev`))?.trim()
    if (mm) out.push({majorMinor: mm, devPath: await devPathOf(mm)})
  }
  return out
}

/**
 * Whether a block device is busy: mounted (itself or a partition), or held open exclusively
 * (an O_EXCL open fails with EBUSY, as BlockVolume's own open would). Waits.
 */
export async function deviceBusy(mm: string, devPath: string): Promise<{busy: boolean; mountedOn: string[]}> {
  const mountedOn = await mountPoints(mm)
  if (mountedOn.length > 0) return {busy: true, mountedOn}
  try {
    const fh = await fsp.open(devPath, constants.O_RDONLY | constants.O_EXCL)
    await fh.close()
    return {busy: false, mountedOn}
  } catch (error) {
    return {busy: errnoOf(error) === 'EBUSY', mountedOn}
  }
}

/** What a block device guarantees about zeroing, from its queue's sysfs limits. */
export interface ZeroingLimits {
  /** queue/logical_block_size: the kernel's zeroing ioctls take only multiples of it. */
  logicalBlock: number
  /** queue/discard_zeroes_data is 1 (old kernels): a discarded block reads as zeros. */
  discardZeroes: boolean
  /** queue/write_zeroes_max_bytes > 0: the device has WRITE ZEROES, which may unmap and guarantees zeros. */
  writeZeroes: boolean
}

/**
 * The zeroing limits of device MAJ:MIN (a partition's are its disk's queue). Missing files
 * read as "not guaranteed". Waits.
 */
export async function sysfsZeroing(mm: string): Promise<ZeroingLimits> {
  const q = async (name: string): Promise<string | undefined> =>
    (await readSysfs(`${sysDir(mm)}/queue/${name}`)) ?? (await readSysfs(`${sysDir(mm)}/../queue/${name}`))
  const block = Number((await q('logical_block_size'))?.trim())
  return {
    logicalBlock: Number.isSafeInteger(block) && block >= 512 ? block : 512,
    discardZeroes: (await q('discard_zeroes_data'))?.trim() === '1',
    writeZeroes: Number((await q('write_zeroes_max_bytes'))?.trim() ?? 0) > 0,
  }
}
