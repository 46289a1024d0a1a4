import {Args} from '@oclif/core'

/*
 * A command's positional arguments. oclif, when an argument is left out and stdin is not a
 * terminal, reads stdin (for up to 10 ms) and takes what it finds as the argument's value:
 * `echo db2 | clonectl status` showed db2 only, `echo c2 | clonectl restore db1` would have
 * restored from c2, and every command without its optional argument waited on stdin at start.
 * Arguments are typed or left out, never guessed from a pipe.
 */

/** An argument that may be left out. */
export function operand(description: string) {
  return Args.string({description, ignoreStdin: true})
}

/** An argument that must be given (a usage error, exit 2, without it). */
export function requiredOperand(description: string) {
  return Args.string({description, required: true, ignoreStdin: true})
}
