package org.edge.plan;

import java.util.Arrays;

/** A host-side array between method calls: float32, int64 or bool, row-major, with its shape. */
public final class Tensor {
    public enum Type { FLOAT32, INT64, BOOL }

    public final Type type;
    public final long[] shape;
    public final float[] f;
    public final long[] l;
    public final boolean[] b;

    private Tensor(Type type, long[] shape, float[] f, long[] l, boolean[] b) {
        this.type = type;
        this.shape = shape;
        this.f = f;
        this.l = l;
        this.b = b;
        if (numel() != length()) throw new PlanException("a tensor of shape " + Arrays.toString(shape) + " needs " + numel() + " values, got " + length());
    }

    public static Tensor of(float[] data, long... shape) { return new Tensor(Type.FLOAT32, shape, data, null, null); }
    public static Tensor of(long[] data, long... shape) { return new Tensor(Type.INT64, shape, null, data, null); }
    public static Tensor of(boolean[] data, long... shape) { return new Tensor(Type.BOOL, shape, null, null, data); }

    public long numel() {
        long n = 1;
        for (long d : shape) n *= d;
        return n;
    }

    private int length() {
        return f != null ? f.length : l != null ? l.length : b.length;
    }

    public boolean sameAs(Tensor o) {
        return type == o.type && Arrays.equals(shape, o.shape) && Arrays.equals(f, o.f) && Arrays.equals(l, o.l) && Arrays.equals(b, o.b);
    }

    @Override
    public String toString() {
        return type + Arrays.toString(shape);
    }
}
