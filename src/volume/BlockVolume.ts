import {NotFoundError, RefusedError, UsageError, VolumeIoError, errnoOf} from '../errors/errors.js'
import type {DurableFile, DurableFs} from '../io/DurableFs.js'
import {majorMinor, mountPoints, sysfsReadOnly, sysfsSize, sysfsZeroing, type ZeroingLimits} from './blockDevice.js'
import {FileVolume, ioError} from './FileVolume.js'
import type {Kernel} from './kernel.js'
import type {Fingerprint, VolumeExtent, VolumeKind} from './Volume.js'

/**
 * A block device, with FileVolume's data path (positional I/O through the page cache;
 * fdatasync on a block device flushes it, including its volatile write cache).
 *
 * Opened for writing with O_EXCL (without O_CREAT), which Linux refuses with EBUSY while the
 * device is mounted, or held exclusively by another program (another clonectl, a VM, a
 * device-mapper or md stack; a whole disk while one of its partitions is). The exclusive
 * claim lasts until close(). Read-only opens are not exclusive. The size comes from sysfs
 * by major:minor.
 *
 * Zeroing (kernel.ts): writeZeroes is BLKZEROOUT (the device zeroes, blocks kept); with
 * `punch` (TRIM), BLKDISCARD only where sysfs says discarded blocks read as zeros
 * (discard_zeroes_data), else fallocate(PUNCH_HOLE) where the device has WRITE ZEROES (the
 * kernel then unmaps only with zeros guaranteed, and refuses otherwise), else BLKZEROOUT.
 * Never a bare discard that could leave old data readable: clones are compared byte for byte.
 */
export class BlockVolume extends FileVolume {
  override readonly kind: VolumeKind = 'block'

  private constructor(
    fs: DurableFs,
    file: DurableFile,
    path: string,
    size: number,
    readOnly: boolean,
    /** "major:minor" of the device. */
    readonly majorMinor: string,
  ) {
    super(fs, file, path, size, readOnly)
  }

  /** Open a block device by path (symlinks such as /dev/disk/by-id/… are followed). Waits. */
  static override async open(fs: DurableFs, path: string, opts: {write: boolean}): Promise<BlockVolume> {
    let st
    try {
      st = await fs.stat(path)
    } catch (error) {
      if (errnoOf(error) === 'ENOENT') throw new NotFoundError(`block device ${path} does not exist`, 'check the path (lsblk, losetup -l)')
      throw ioError(path, 'opening', error)
    }
    if (!st.isBlockDevice) throw new UsageError(`${path} is not a block device`)
    return BlockVolume.openDevice(fs, path, st.rdev, opts)
  }

  /** Open a block device whose stat rdev is already known (openVolume stats it first). Waits. */
  static async openDevice(fs: DurableFs, path: string, rdev: number, opts: {write: boolean}): Promise<BlockVolume> {
    const mm = majorMinor(rdev)
    if (opts.write && (await sysfsReadOnly(mm)))
      throw new RefusedError(`block device ${path} (${mm}) is read-only`, `make it writable (blockdev --setrw ${path}), or use another device`)
    let file: DurableFile
    try {
      file = await fs.open(path, {write: opts.write, exclusive: opts.write})
    } catch (error) {
      if (errnoOf(error) === 'EBUSY') {
        const at = await mountPoints(mm)
        throw new RefusedError(
          `block device ${path} is busy (mounted or in use by another program)${at.length > 0 ? `: mounted on ${at.join(', ')}` : ''}`,
          at.length > 0 ? `unmount it first (umount ${at[0]}); clonectl never writes a mounted device` : 'stop whatever holds it (a mount, a VM, another clonectl; see lsblk and fuser -v), then run the command again',
        )
      }
      throw ioError(path, 'opening', error)
    }
    let size: number
    try {
      size = await sysfsSize(mm)
    } catch (error) {
      await file.close().catch(() => undefined)
      throw error
    }
    return new BlockVolume(fs, file, path, size, !opts.write, mm)
  }

  private zeroing?: Promise<ZeroingLimits>

  /** A block device has no holes to tell (lseek SEEK_DATA is EINVAL there): one data run. Waits for nothing. */
  override async extents(position: number, length: number): Promise<VolumeExtent[]> {
    if (!Number.isSafeInteger(position) || !Number.isSafeInteger(length) || position < 0 || length < 0 || position + length > this.size)
      throw new VolumeIoError(`read of ${length} bytes at offset ${position} is past the end of ${this.path} (${this.size} bytes)`, 'EINVAL')
    return length === 0 ? [] : [{offset: position, length, kind: 'data'}]
  }

  /** One data run, as extents() says. Waits for nothing. */
  override async firstExtent(position: number, length: number): Promise<VolumeExtent | undefined> {
    return (await this.extents(position, length))[0]
  }

  /** A block device has no holes to tell. */
  override tellsHoles(): boolean {
    return false
  }

  protected override async zeroByKernel(k: Kernel, fd: number, position: number, length: number, punch: boolean): Promise<boolean> {
    this.zeroing ??= sysfsZeroing(this.majorMinor)
    const lim = await this.zeroing
    // The ioctls take whole logical blocks only: an unaligned range is written as zeros.
    if (position % lim.logicalBlock !== 0 || length % lim.logicalBlock !== 0) return false
    if (punch && lim.discardZeroes) await k.blkDiscard(fd, position, length)
    else if (punch && lim.writeZeroes) {
      try {
        await k.punchHole(fd, position, length)
      } catch {
        // EOPNOTSUPP: the device cannot unmap with zeros guaranteed after all.
        await k.blkZeroOut(fd, position, length)
      }
    } else await k.blkZeroOut(fd, position, length)
    return true
  }

  /** The device number and its size now (a resized device changes it). Waits. */
  override async fingerprint(): Promise<Fingerprint> {
    return {kind: 'block', size: await sysfsSize(this.majorMinor), majorMinor: this.majorMinor}
  }
}
