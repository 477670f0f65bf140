/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Compiling BPF programs with `clang -target bpf` leaves __x86_64__
 * undefined, so glibc's <gnu/stubs.h> asks for the 32-bit variant, which
 * only libc6-dev-i386 ships. That header merely lists unimplemented libc
 * functions, none of which a BPF program can call, so an empty one does.
 * The build script adds this directory with -idirafter: a real
 * stubs-32.h, if installed, still wins.
 */
