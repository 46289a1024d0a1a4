import {Command, Flags, type Interfaces} from '@oclif/core'
import {ExitCode, isClonectlError, UsageError} from '../errors/errors.js'
import type {GroupContext} from '../group/CloneGroup.js'
import {nodeFs} from '../io/NodeDurableFs.js'
import {GroupStore} from '../store/GroupStore.js'
import {ensureStateDir, resolveStateDir} from '../store/stateDir.js'
import {confirm} from './confirm.js'
import type {ErrorResult} from './results/results.js'
import {colour, configureColour} from './terminal.js'
import {showWait} from './wait.js'

export type BaseFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>

/**
 * What every clonectl command shares: the state directory, --json, the rendering of
 * expected errors (message and fix on stderr, the documented exit status) and of bugs.
 */
export abstract class BaseCommand extends Command {
  static enableJsonFlag = true

  static baseFlags = {
    'state-dir': Flags.string({
      summary: 'State directory (default: $CLONECTL_STATE_DIR, /var/lib/clonectl as root, else ~/.local/state/clonectl).',
      helpGroup: 'GLOBAL',
    }),
  }

  protected stateDir = ''
  /** Printed with the error object under --json when the command fails after producing it (a failed drill's report). */
  protected failedResult?: ErrorResult['result']

  public async init(): Promise<void> {
    configureColour()
    this.argv = normalizeWait(this.argv)
    await super.init()
  }

  /** Resolve the state directory and build the context the engine needs. */
  protected async context(stateDirFlag: string | undefined, opts: {create?: boolean} = {}): Promise<GroupContext> {
    this.stateDir = resolveStateDir(stateDirFlag)
    if (opts.create ?? true) await ensureStateDir(nodeFs, this.stateDir)
    return {fs: nodeFs, store: new GroupStore(nodeFs, this.stateDir), warn: (m) => this.warnLine(m), waiting: (what, afterMs) => showWait(what, {afterMs})}
  }

  /** A diagnostic line on stderr (never stdout: stdout carries results). */
  protected warnLine(message: string): void {
    process.stderr.write(`${colour.warn('Warning:')} ${message}\n`)
  }

  protected info(message: string): void {
    if (!this.jsonEnabled()) process.stderr.write(`${message}\n`)
  }

  /** The command line as the user typed it, for lock holders and operation records. */
  protected commandLine(): string {
    return ['clonectl', ...this.id!.split(':'), ...this.argv].join(' ')
  }

  protected async catch(err: Error & {exitCode?: number; oclif?: {exit?: number}}): Promise<unknown> {
    if (isClonectlError(err)) {
      if (this.jsonEnabled()) {
        this.printJsonError({status: err.exitCode, error: {code: err.code, name: err.name, message: err.message, fix: err.fix}, result: this.failedResult})
      } else {
        process.stderr.write(`${colour.error('Error:')} ${err.message}\n`)
        if (err.fix) process.stderr.write(`  ${err.fix}\n`)
      }
      this.exit(err.exitCode)
    }
    if (err.name === 'ExitError') throw err
    // oclif's own errors (bad flags, missing arguments: exit 2) print themselves, except under
    // --json, where stdout carries the error object as for every other failure.
    if (err.oclif?.exit !== undefined) {
      if (!this.jsonEnabled() || err.oclif.exit !== ExitCode.usage) throw err
      const lines = err.message.split('\n').map((l) => l.trim()).filter((l) => l && !/^See more help with/.test(l))
      this.printJsonError({status: ExitCode.usage, error: {code: 'USAGE', name: 'UsageError', message: lines.join(' '), fix: `see \`${this.config.bin} ${(this.id ?? '').replace(/:/g, ' ')} --help\``}})
      this.exit(ExitCode.usage)
    }
    process.stderr.write(`${colour.error('Error (a bug in clonectl):')} ${err.stack ?? err.message}\n  please report it with the command you ran\n`)
    if (this.jsonEnabled()) this.printJsonError({status: ExitCode.bug, error: {code: 'BUG', name: err.name || 'Error', message: err.message || 'unknown error', fix: 'please report it with the command you ran (the stack is on stderr)'}})
    this.exit(ExitCode.bug)
  }

  /** Destructive commands confirm; under --json only --yes confirms (confirm.ts). */
  protected async confirm(question: string, yes: boolean): Promise<void> {
    await confirm(question, yes, this.jsonEnabled())
  }

  private printJsonError(e: ErrorResult): void {
    process.stdout.write(`${JSON.stringify(e, null, 2)}\n`)
  }
}

/**
 * `--wait` takes an optional value, which oclif cannot express: `--wait SECONDS` (a number
 * right after it, as help shows) and `--wait=SECONDS` wait that long, `--wait forever` and a
 * bare `--wait` (before another flag, an argument that is not a number, or at the end) wait
 * forever. Everything after `--` is left alone.
 */
export function normalizeWait(argv: string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!
    if (a === '--') {
      out.push(...argv.slice(i))
      break
    }
    if (a !== '--wait') {
      out.push(a)
      continue
    }
    const next = argv[i + 1]
    if (next !== undefined && (/^\d+(\.\d+)?$/.test(next) || next === 'forever')) {
      out.push(`--wait=${next}`)
      i++
    } else out.push('--wait=forever')
  }
  return out
}

/** Parse --wait's value: "forever" (bare --wait) or seconds. */
export function waitSeconds(v: string | undefined): number | undefined {
  if (v === undefined) return undefined
  if (v === 'forever') return Number.POSITIVE_INFINITY
  const n = Number(v)
  if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new UsageError(`--wait expects seconds, got "${v}"`, 'pass --wait alone to wait forever, or --wait SECONDS')
  return n
}

export const waitFlag = Flags.string({
  summary: 'If the group is locked by another clonectl, wait for it (forever when given alone, or SECONDS: `--wait 600` or `--wait=600`) instead of failing.',
  helpValue: 'SECONDS',
})

export const rateFlag = Flags.string({
  summary: 'Limit copying to this many bytes per second (e.g. 50M).',
  helpValue: 'BYTES/s',
})
