import {RefusedError, errnoOf} from '../errors/errors.js'
import type {DurableFile, DurableFs} from '../io/DurableFs.js'
import {isMounted, majorMinor, sysfsSize} from './blockDevice.js'
import {FileVolume, ioError} from './FileVolume.js'
import type {Fingerprint, VolumeKind} from './Volume.js'

/**
 * A block device. Opened for writing with O_EXCL (without O_CREAT), which Linux refuses with
 * EBUSY while the device is mounted or held exclusively by another program. Its size comes
 * from sysfs by major:minor.
 */
export class BlockVolume extends FileVolume {
  override readonly kind: VolumeKind = 'block'

  private constructor(
    fs: DurableFs,
    file: DurableFile,
    path: string,
    size: number,
    readOnly: boolean,
    readonly majorMinor: string,
  ) {
    super(fs, file, path, size, readOnly)
  }

  static async openDevice(fs: DurableFs, path: string, rdev: number, opts: {write: boolean}): Promise<BlockVolume> {
    const mm = majorMinor(rdev)
    if (opts.write && (await isMounted(mm))) throw new RefusedError(`block device ${path} (${mm}) is mounted`, 'unmount it first; clonectl never writes a mounted device')
    let file: DurableFile
    try {
      file = await fs.open(path, {write: opts.write, exclusive: opts.write})
    } catch (error) {
      if (errnoOf(error) === 'EBUSY') throw new RefusedError(`block device ${path} is busy (mounted or in use by another program)`, 'stop whatever holds it (a mount, a VM, another clonectl), then run the command again')
      throw ioError(path, 'opening', error)
    }
    const size = await sysfsSize(mm)
    return new BlockVolume(fs, file, path, size, !opts.write, mm)
  }

  override async fingerprint(): Promise<Fingerprint> {
    return {kind: 'block', size: await sysfsSize(this.majorMinor), majorMinor: this.majorMinor}
  }
}
