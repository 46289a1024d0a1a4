import {readFile} from 'node:fs/promises'

/** "major:minor" of a device number, as glibc's gnu_dev_major/minor compute it (no native addon). */
export function majorMinor(rdev: number): string {
  const major = (Math.floor(rdev / 256) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff)
  const minor = (rdev & 0xff) | (Math.floor(rdev / 2 ** 12) & ~0xff)
  return `${major}:${minor}`
}

/** A block device's size in bytes from sysfs (512-byte sectors). */
export async function sysfsSize(mm: string): Promise<number> {
  const text = await readFile(`/sys/dev/block/${mm}/size`, 'utf8')
  return Number(text.trim()) * 512
}

/** The backing file of a loop device, or undefined. */
export async function loopBackingFile(mm: string): Promise<string | undefined> {
  try {
    const f = (await readFile(`/sys/dev/block/${mm}/loop/backing_file`, 'utf8')).trim()
    return f.replace(/ \(deleted\)$/, '') || undefined
  } catch {
    return undefined
  }
}

/** True when a file system on this device is mounted (per /proc/self/mountinfo). */
export async function isMounted(mm: string): Promise<boolean> {
  try {
    const text = await readFile('/proc/self/mountinfo', 'utf8')
    return text.split('\n').some((l) => l.split(' ')[2] === mm)
  } catch {
    return false
  }
}
